"""Merge requests: building them, pushes, the MR entity as each GitLab version shows it, its
detailed_merge_status, and GET /projects/:id/merge_requests[/:iid].
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.commits import _commit
from tests.fakegitlab.diffs import (
    _diff_entry,
    _stored_diffs,
)
from tests.fakegitlab.pipelines import _pipeline_basic, _pipeline_full
from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    ApiError,
    Ctx,
    Params,
    Route,
    Server,
    iso,
    not_found,
    sha_for,
)
from tests.fakegitlab.state import MergeRequest, Project
from tests.fakegitlab.users import _user


class MergeRequests(Server):
    """Merge requests: their state, pushes, and the MR entity for each version."""

    def _merge_request_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", "/projects/:id/merge_requests", self._list_mrs),
            Route("GET", mr, self._get_mr),
        ]

    def add_mr(self, project_id: int, iid: int, **fields: Any) -> JSON:
        """Add a merge request and return its stored API shape (mutable: later reads see changes).

        Fields: sha, title, description, labels, draft, state, source_branch, target_branch,
        author ({id, username, name}), head_pipeline ({status, ...} or None) or pipeline
        ("success"...), blocking_discussions_resolved, has_conflicts, detailed_merge_status (pins
        it; otherwise it is computed), diffs (list for set_diffs), commits, approved_by (users),
        approvals_required; anything else is stored as given.

        A title starting with "Draft:" makes the MR a draft, and draft=True prefixes the title,
        because GitLab derives one from the other.
        """
        project = self.projects[project_id]
        now = self.wall()
        title = str(fields.pop("title", f"Change {iid}"))
        draft = fields.pop("draft", None)
        if draft is None:
            draft = _is_draft_title(title)
        elif draft and not _is_draft_title(title):
            title = f"Draft: {title}"
        path = project.data["path_with_namespace"]
        data: JSON = {
            "id": self._next_id(fields.pop("id", None)),
            "iid": iid,
            "project_id": project_id,
            "title": title,
            "description": fields.pop("description", ""),
            "state": fields.pop("state", "opened"),
            "created_at": iso(now),
            "updated_at": iso(now),
            "merged_by": None,
            "merge_user": None,
            "merged_at": None,
            "closed_by": None,
            "closed_at": None,
            "target_branch": fields.pop("target_branch", "main"),
            "source_branch": fields.pop("source_branch", f"feature-{iid}"),
            "user_notes_count": 0,
            "upvotes": 0,
            "downvotes": 0,
            "author": _user(fields.pop("author", {"id": 1, "username": "alice"}), self.url),
            "assignees": [],
            "assignee": None,
            "reviewers": [],
            "source_project_id": project_id,
            "target_project_id": project_id,
            "labels": list(fields.pop("labels", [])),
            "draft": bool(draft),
            "milestone": None,
            "merge_when_pipeline_succeeds": False,
            "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable",
            "sha": fields.pop("sha", None) or sha_for(f"{project_id}/{iid}/0"),
            "merge_commit_sha": None,
            "squash_commit_sha": None,
            "discussion_locked": None,
            "should_remove_source_branch": None,
            "force_remove_source_branch": True,
            "reference": f"!{iid}",
            "references": {"short": f"!{iid}", "relative": f"!{iid}", "full": f"{path}!{iid}"},
            "web_url": f"{self.url}/{path}/-/merge_requests/{iid}",
            "squash": False,
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": bool(fields.pop("has_conflicts", False)),
            "blocking_discussions_resolved": bool(
                fields.pop("blocking_discussions_resolved", True)
            ),
            "subscribed": False,
            "changes_count": "0",
            "pipeline": None,
            "head_pipeline": None,
            "diff_refs": None,
            "merge_error": None,
            "user": {"can_merge": True},
        }
        mr = MergeRequest(data=data, head_since=self.now())
        mr.fixed_merge_status = fields.pop("detailed_merge_status", None)
        mr.approvals_required = int(fields.pop("approvals_required", 0))
        diffs = fields.pop("diffs", None)
        commits = fields.pop("commits", None)
        approved_by = fields.pop("approved_by", [])
        pipeline_status = fields.pop("pipeline", None)
        head_pipeline = fields.pop("head_pipeline", None)
        data.update(fields)
        project.mrs[iid] = mr
        self._add_version(mr)
        self._create_pending_rows(project, mr)
        if diffs is not None:
            self.set_diffs(project_id, iid, diffs)
        self.set_commits(
            project_id,
            iid,
            commits if commits is not None else [{"id": data["sha"], "message": title}],
        )
        for user in approved_by:
            self.approve(project_id, iid, user)
        if head_pipeline is not None:
            extra = {k: v for k, v in head_pipeline.items() if k != "status"}
            self.set_pipeline(project_id, iid, head_pipeline.get("status", "success"), **extra)
        elif pipeline_status is not None:
            self.set_pipeline(project_id, iid, pipeline_status)
        self._refresh(project, mr)
        return data

    def mr(self, project_id: int, iid: int) -> JSON:
        """The stored API shape of an MR (mutable)."""
        return self.projects[project_id].mrs[iid].data

    @property
    def mrs(self) -> dict[tuple[int, int], JSON]:
        """{(project_id, iid): stored MR dict}; mutate a dict to change what the API returns."""
        return {
            (p, iid): mr.data
            for p, project in self.projects.items()
            for iid, mr in project.mrs.items()
        }

    def update_mr(self, project_id: int, iid: int, **fields: Any) -> JSON:
        """Change MR fields as a user would (title/draft kept in sync, updated_at bumped)."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if "detailed_merge_status" in fields:
            mr.fixed_merge_status = fields.pop("detailed_merge_status")
        if "title" in fields and "draft" not in fields:
            fields["draft"] = _is_draft_title(fields["title"])
        if fields.get("draft") and not _is_draft_title(fields.get("title", mr.data["title"])):
            fields["title"] = f"Draft: {fields.get('title', mr.data['title'])}"
        if "draft" in fields and not fields["draft"]:
            fields["title"] = _strip_draft(fields.get("title", mr.data["title"]))
        if "author" in fields:
            fields["author"] = _user(fields["author"], self.url)
        mr.data.update(fields)
        self._touch(project, mr)
        return mr.data

    def push(
        self,
        project_id: int,
        iid: int,
        sha: str,
        *,
        message: str | None = None,
        pipeline: str | None = None,
        reset_approvals: bool | None = None,
        diffs: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """The source branch moves to `sha`, as GitLab records a push (MergeRequests::
        RefreshService → reload_diff → a new merge_request_diff, the MR's `sha`):

        - a new diff version (GET .../versions); with `diffs`, the change it shows;
        - status checks show `pending` for the new SHA: no response row is stored for it, so a
          check nobody answers stays pending for good (see `_status_of`);
        - `head_pipeline` keeps pointing at the old head's pipeline until one exists for the new
          head (app/models/merge_request.rb: `update_head_pipeline` only ever sets it to a
          pipeline matching `diff_head_sha`; the push never clears it). `pipeline` creates one
          for the new head at once;
        - where the project resets approvals on push (GET /projects/:id/approvals,
          `reset_approvals_on_push`, on by default; `reset_approvals` overrides it for this
          push), the approvals are deleted APPROVAL_RESET_DELAY (10 s) later on the fake's clock,
          with no webhook (MergeRequestResetApprovalsWorker.perform_in(10.seconds));
        - with `message`, a commit is added on top."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.data["sha"] = sha
        mr.head_since = self.now()
        if message is not None:
            mr.commits.insert(0, _commit({"id": sha, "message": message}, self.url, project))
        if diffs is not None:
            mr.diffs = [_diff_entry(f) for f in diffs]
        self._add_version(mr)
        resets = project.approval_settings["reset_approvals_on_push"]
        if reset_approvals if reset_approvals is not None else resets:
            mr.pending_resets.append((self.now() + self.approval_reset_delay, sha))
        if pipeline is not None:
            self.set_pipeline(project_id, iid, pipeline)
        self._touch(project, mr)

    def merge_status(self, project_id: int, iid: int) -> str:
        """The MR's `detailed_merge_status` as GitLab would compute it now."""
        project = self.projects[project_id]
        return self._detailed_merge_status(project, project.mrs[iid])

    def _mr(self, ctx: Ctx) -> tuple[Project, MergeRequest]:
        project = self._project(ctx)
        iid_text = ctx.args["merge_request_iid"]
        if not iid_text.isdigit():
            raise ApiError(400, {"error": "merge_request_iid is invalid"})
        mr = project.mrs.get(int(iid_text))
        if mr is None:
            raise not_found("Merge Request")
        return project, mr

    def _render_mr(self, project: Project, mr: MergeRequest, *, basic: bool = False) -> JSON:
        """The MR entity for this version: `draft` from 15.0, `work_in_progress` until 16.x
        (simplified from GitLab, whose exact cut-overs vary: the bot must accept either),
        `detailed_merge_status` from 15.6. `basic` is the list entity (no pipeline fields)."""
        data = json.loads(json.dumps(mr.data))  # a deep copy: a client must not alias state
        draft = data.pop("draft")
        if self.at_least(15, 0):
            data["draft"] = draft
        if not self.at_least(17, 0):
            data["work_in_progress"] = draft
        if self.at_least(15, 6):
            data["detailed_merge_status"] = self._detailed_merge_status(project, mr)
        else:
            data.pop("detailed_merge_status", None)
        # lib/api/entities/merge_request.rb: `expose :head_pipeline` is the stored association
        # (which lags a push, see `push`), never `diff_head_pipeline`.
        head = self._head_pipeline(mr)
        data["head_pipeline"] = _pipeline_full(head) if head else None
        data["pipeline"] = _pipeline_basic(head) if head else None
        if basic:
            for key in ("pipeline", "head_pipeline", "diff_refs", "changes_count", "user"):
                data.pop(key, None)
            data.pop("merge_error", None)
            data.pop("subscribed", None)
        return data

    def _refresh(self, project: Project, mr: MergeRequest) -> None:
        """Recompute the derived fields stored in the MR's API shape."""
        data = mr.data
        # lib/api/entities/merge_request.rb: changes_count is merge_request_diff.real_size, the
        # stored file count with a "+" when the diff was cut (Gitlab::Git::DiffCollection).
        stored, overflow = _stored_diffs(mr.diffs)
        data["changes_count"] = f"{len(stored)}+" if overflow else str(len(stored))
        data["user_notes_count"] = sum(
            1 for d in mr.discussions for n in d["notes"] if not n["system"]
        )
        base = mr.base_sha or sha_for(f"base/{project.data['id']}/{data['target_branch']}")
        data["diff_refs"] = {"base_sha": base, "head_sha": data["sha"], "start_sha": base}
        data["merge_status"] = "cannot_be_merged" if data["has_conflicts"] else "can_be_merged"
        data["web_url"] = f"{self.url}/{project.data['path_with_namespace']}/-/merge_requests/"
        data["web_url"] += str(data["iid"])
        data["detailed_merge_status"] = self._detailed_merge_status(project, mr)

    def _touch(self, project: Project, mr: MergeRequest) -> None:
        mr.data["updated_at"] = iso(self.wall())
        self._refresh(project, mr)

    def _detailed_merge_status(self, project: Project, mr: MergeRequest) -> str:
        """GitLab's merge checks in their order: not_open, draft_status, conflict,
        discussions_not_resolved, ci_must_pass, not_approved, status_checks_must_pass."""
        if mr.fixed_merge_status is not None:
            return mr.fixed_merge_status
        data = mr.data
        # The merge check uses diff_head_pipeline: the head pipeline only if it is for the head.
        head = self._head_pipeline(mr) or {}
        pipeline = head if data["sha"] in (head.get("sha"), head.get("_source_sha")) else {}
        if data["state"] != "opened":
            return "not_open"
        if data["draft"]:
            return "draft_status"
        if data["has_conflicts"]:
            return "conflict"
        if not data["blocking_discussions_resolved"] and project.data.get(
            "only_allow_merge_if_all_discussions_are_resolved"
        ):
            return "discussions_not_resolved"
        if project.data.get("only_allow_merge_if_pipeline_succeeds") and (
            pipeline.get("status") != "success"
        ):
            return "ci_must_pass"
        if len(mr.approved_by) < mr.approvals_required:
            return "not_approved"
        if project.data.get("only_allow_merge_if_all_status_checks_passed") and any(
            self._status_of(mr, c) != "passed" for c in self._applicable_checks(project, mr)
        ):
            return "status_checks_must_pass"
        return "mergeable"

    def _list_mrs(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/merge_requests: filters state (opened/closed/merged/locked/all,
        default all), iids[], source_branch, target_branch, labels (all of, comma-separated),
        updated_after; order_by created_at/updated_at, sort desc (default) or asc; paginated."""
        project = self._project(ctx)
        checked = Params(ctx.params)
        state = checked.text("state", values=["opened", "closed", "merged", "locked", "all"])
        iids = checked.integers("iids")
        order_by = checked.text("order_by", values=["created_at", "updated_at", "title"])
        sort = checked.text("sort", values=["asc", "desc"])
        checked.check()
        mrs = list(project.mrs.values())
        if state and state != "all":
            mrs = [m for m in mrs if m.data["state"] == state]
        if iids:
            mrs = [m for m in mrs if m.data["iid"] in iids]
        for key in ("source_branch", "target_branch"):
            if key in ctx.params:
                mrs = [m for m in mrs if m.data[key] == ctx.params[key]]
        if ctx.params.get("labels"):
            wanted = set(str(ctx.params["labels"]).split(","))
            mrs = [m for m in mrs if wanted <= set(m.data["labels"])]
        if ctx.params.get("updated_after"):
            mrs = [m for m in mrs if m.data["updated_at"] > str(ctx.params["updated_after"])]
        key = order_by or "created_at"
        mrs.sort(key=lambda m: (m.data[key], m.data["iid"]), reverse=(sort or "desc") == "desc")
        return self._paginate(ctx, mrs, lambda m: self._render_mr(project, m, basic=True))

    def _get_mr(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/merge_requests/:iid: the full MR entity (see `_render_mr`)."""
        project, mr = self._mr(ctx)
        self._apply_resets(mr)
        return web.json_response(self._render_mr(project, mr))


_DRAFT_PREFIX = re.compile(r"^\s*(\[draft\]|\(draft\)|draft:|draft\s+-|\[wip\]|wip:)\s*", re.I)


def _is_draft_title(title: str) -> bool:
    return bool(_DRAFT_PREFIX.match(title))


def _strip_draft(title: str) -> str:
    return _DRAFT_PREFIX.sub("", title)

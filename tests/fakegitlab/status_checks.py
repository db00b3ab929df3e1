"""External status checks: the checks of a project (/projects/:id/external_status_checks CRUD),
what an MR shows for each (GET .../status_checks), and the responses posted to it
(POST .../status_check_responses, POST .../status_checks/:id/retry).
"""

from __future__ import annotations

import re

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    ApiError,
    Ctx,
    Params,
    Route,
    Server,
    record_not_found,
)
from tests.fakegitlab.state import MergeRequest, Project, StatusResponse


class StatusChecks(Server):
    """External status checks, what an MR shows for them, and the responses posted."""

    # Status check behaviour (a test may set either on its fake)
    pending_timeout: float | None = 120.0  # 16.6+: a stored pending row fails after it
    legacy_status_checks: bool | None = None  # None: decided by version (< 15.0)

    def _status_check_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", f"{mr}/status_checks", self._list_mr_status_checks),
            Route("POST", f"{mr}/status_check_responses", self._post_status_response),
            Route(
                "POST",
                f"{mr}/status_checks/:external_status_check_id/retry",
                self._retry_status_check,
                since=(15, 7),
            ),
            Route("GET", "/projects/:id/external_status_checks", self._list_checks),
            Route("POST", "/projects/:id/external_status_checks", self._post_check),
            Route("PUT", "/projects/:id/external_status_checks/:check_id", self._put_check),
            Route("DELETE", "/projects/:id/external_status_checks/:check_id", self._delete_check),
        ]

    def add_status_check(
        self,
        project_id: int,
        name: str,
        *,
        external_url: str = "http://bot/webhook",
        protected_branches: list[str] | None = None,
        id: int | None = None,
        shared_secret: str | None = None,
    ) -> JSON:
        """Register an external status check (bypasses the API's validations, e.g. GitLab's
        uniqueness of `external_url` per project). Branch names are protected if they are not."""
        project = self.projects[project_id]
        branch_ids = [
            self.add_protected_branch(project_id, b)["id"] for b in protected_branches or []
        ]
        check = {
            "id": self._next_id(id),
            "name": name,
            "project_id": project_id,
            "external_url": external_url,
            "protected_branch_ids": branch_ids,
            "shared_secret": shared_secret,
        }
        project.checks[check["id"]] = check
        return self._render_check(project, check)

    def _create_pending_rows(self, project: Project, mr: MergeRequest) -> None:
        """A new MR gets a stored `pending` row for each of the project's checks, for its head
        at creation: ee/app/models/ee/merge_request.rb (after_create_commit
        :create_pending_status_check_responses, where status checks are licensed) runs
        ee/app/workers/compliance_management/pending_status_check_worker.rb, which creates one
        per check of the project (every check, whatever its branches). Nothing else creates one
        but Retry and a posted `pending`: a push does not. Such rows can only exist where
        `pending` is a status at all (16.5+, ee/app/models/merge_requests/status_check_response.rb
        `enum status: %w[passed failed pending]`)."""
        if self.legacy_status or not self.at_least(16, 5) or not self._has_ultimate(project):
            return
        sha = mr.data.get("sha")
        if not sha:  # `return unless diff_head_sha.present?`
            return
        for check_id in sorted(project.checks):
            mr.responses.append(
                StatusResponse(self._next_id(), check_id, sha, "pending", self.now())
            )

    def set_status(
        self, project_id: int, iid: int, check_id: int, sha: str, status: str
    ) -> StatusResponse:
        """Record a status response as if someone POSTed it (no validation: any SHA, any
        status), e.g. a forged or hand-set status the bot must heal."""
        mr = self.projects[project_id].mrs[iid]
        row = StatusResponse(self._next_id(), check_id, sha, status, self.now())
        mr.responses.append(row)
        return row

    def check_status(self, project_id: int, iid: int, check_name: str) -> str:
        """What GET .../status_checks shows now for `check_name` (KeyError if it is not listed)."""
        return self.statuses(project_id, iid)[check_name]

    def statuses(self, project_id: int, iid: int) -> dict[str, str]:
        """{check name: status} for every check GET .../status_checks would list now."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        return {c["name"]: self._status_of(mr, c) for c in self._applicable_checks(project, mr)}

    def status_responses(self, project_id: int, iid: int) -> list[StatusResponse]:
        """Every stored status response row of the MR, oldest first."""
        return list(self.projects[project_id].mrs[iid].responses)

    @property
    def legacy_status(self) -> bool:
        """14.0-14.8 semantics: no `status` param, any POST approves, the list shows approved.

        14.9-14.10 had passed/failed behind a feature flag that is off by default, so they count
        as legacy unless a test sets `legacy_status_checks = False`.
        """
        if self.legacy_status_checks is not None:
            return self.legacy_status_checks
        return not self.at_least(15, 0)

    def _licensed_project(self, ctx: Ctx) -> Project:
        """Status checks are Ultimate: once the project is found (404 first), an unlicensed one
        answers 401 on every status check endpoint."""
        project = self._project(ctx)
        if not self._has_ultimate(project):
            raise ApiError(401, {"message": "401 Unauthorized"})
        return project

    def _applicable_checks(self, project: Project, mr: MergeRequest) -> list[JSON]:
        """GitLab's `applicable_to_branch`: checks with no protected branch, or one whose name
        equals the MR's target branch (an exact SQL comparison: a wildcard protected branch such
        as ``release/*`` does not make its check apply to ``release/1.0``)."""
        target = mr.data["target_branch"]
        return [
            check
            for check in sorted(project.checks.values(), key=lambda c: c["id"])
            if not check["protected_branch_ids"]
            or any(
                project.protected_branches.get(b, {}).get("name") == target
                for b in check["protected_branch_ids"]
            )
        ]

    def _status_of(self, mr: MergeRequest, check: JSON) -> str:
        """ExternalStatusCheck#status (ee/app/models/merge_requests/external_status_check.rb):
        the newest stored row for the MR's head SHA, else 'pending' (no row: nothing times out).

        14.0-14.8: any response means "approved". 16.6+: a stored `pending` row reads as failed
        once it is older than `pending_timeout`, as
        ee/app/workers/compliance_management/timeout_pending_status_check_responses_worker.rb
        (cron, every minute) flips `StatusCheckResponse.pending.timeout_eligible` rows:
        retried_at IS NULL AND created_at < 2 minutes ago, OR retried_at < 2 minutes ago
        (ee/app/models/merge_requests/status_check_response.rb). Only stored rows: the pending
        shown for a head nobody answered (e.g. after a push) stays pending for good."""
        sha = mr.data["sha"]
        rows = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha]
        if self.legacy_status:
            return "approved" if rows else "pending"
        if not rows:
            return "pending"
        row = rows[-1]
        if (
            row.status == "pending"
            and self.at_least(16, 6)
            and self.pending_timeout is not None
            and self.now() - (row.retried_at if row.retried_at is not None else row.created_at)
            >= self.pending_timeout
        ):
            return "failed"
        return row.status

    def _render_check(self, project: Project, check: JSON) -> JSON:
        """The ExternalStatusCheck entity; `hmac` (whether a secret is set) from 17.3; the secret
        itself is never returned."""
        data = {
            "id": check["id"],
            "name": check["name"],
            "project_id": check["project_id"],
            "external_url": check["external_url"],
            "protected_branches": [
                {
                    "id": b,
                    "project_id": project.data["id"],
                    "name": project.protected_branches[b]["name"],
                    "created_at": project.data["created_at"],
                    "updated_at": project.data["created_at"],
                    "code_owner_approval_required": False,
                }
                for b in check["protected_branch_ids"]
                if b in project.protected_branches
            ],
        }
        if self.at_least(17, 3):
            data["hmac"] = bool(check.get("shared_secret"))
        return data

    def _list_mr_status_checks(self, ctx: Ctx) -> web.Response:
        """GET .../status_checks: `[{id, name, external_url, status}]` for the checks applying
        to the MR's target branch, with the status for the MR's current head SHA (see
        `_status_of`). `external_url` is shown without its query string; paginated."""
        self._licensed_project(ctx)
        project, mr = self._mr(ctx)
        items = [
            {
                "id": check["id"],
                "name": check["name"],
                "external_url": check["external_url"].split("?", 1)[0],
                "status": self._status_of(mr, check),
            }
            for check in self._applicable_checks(project, mr)
        ]
        response = self._paginate(ctx, items)
        response.headers["Poll-Interval"] = "10000"
        return response

    def _post_status_response(self, ctx: Ctx) -> web.Response:
        """POST .../status_check_responses with external_status_check_id, sha, status.

        In GitLab's order: 401 unlicensed; 400 for parameters (`status` required from 15.0,
        passed/failed, plus pending from 16.5; on 14.0-14.8 it is not a parameter and any POST
        records an approval); 404 project/MR; 403 when the token's user cannot approve; 404
        "Not found" for a check not in the project (a check not applying to the target branch
        is accepted); 409 "SHA does not match HEAD of source branch: <head>" when `sha` is not
        the head. 201 with {id, merge_request, external_status_check}; each POST adds a row."""
        self._licensed_project(ctx)
        checked = Params(ctx.params)
        check_id = checked.integer("external_status_check_id", required=True)
        sha = checked.text("sha", required=True)
        status = "approved"
        if not self.legacy_status:
            values = (
                ["passed", "failed", "pending"] if self.at_least(16, 5) else ["passed", "failed"]
            )
            status = checked.text("status", required=True, values=values) or ""
        checked.check()
        project, mr = self._mr(ctx)
        if not self.can_approve:
            raise ApiError(403, {"message": "403 Forbidden"})
        check = project.checks.get(check_id or 0)
        if check is None:
            raise record_not_found()
        if sha != mr.data["sha"]:
            raise ApiError(
                409, {"message": f"SHA does not match HEAD of source branch: {mr.data['sha']}"}
            )
        row = self.set_status(project.data["id"], mr.data["iid"], check["id"], sha or "", status)
        self._touch(project, mr)
        body = {
            "id": row.id,
            "merge_request": self._render_mr(project, mr),
            "external_status_check": self._render_check(project, check),
        }
        return web.json_response(body, status=201)

    def _retry_status_check(self, ctx: Ctx) -> web.Response:
        """POST .../status_checks/:check_id/retry (15.7+): only a check whose newest stored row
        for the head SHA is failed (else 422 "External status check must be failed", also for a
        pending nobody stored, e.g. after a push); that row goes back to pending with
        retried_at set (GitLab re-sends the check request) and the answer is 202, as
        ee/app/services/external_status_checks/retry_service.rb does."""
        self._licensed_project(ctx)
        project, mr = self._mr(ctx)
        check_id = ctx.args["external_status_check_id"]
        check = project.checks.get(int(check_id)) if check_id.isdigit() else None
        if check is None:
            raise record_not_found()
        if self._status_of(mr, check) != "failed":
            raise ApiError(422, {"message": "External status check must be failed"})
        sha = mr.data["sha"]
        last = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha][-1]
        last.status = "pending"
        last.retried_at = self.now()
        self._touch(project, mr)
        return web.json_response({"message": "202 Accepted"}, status=202)

    def _list_checks(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/external_status_checks: every check of the project, paginated."""
        project = self._licensed_project(ctx)
        checks = sorted(project.checks.values(), key=lambda c: c["id"])
        return self._paginate(ctx, [self._render_check(project, c) for c in checks])

    def _check_params(
        self, ctx: Ctx, project: Project, *, creating: bool, current: JSON | None = None
    ) -> JSON:
        """Validate name/external_url/protected_branch_ids/shared_secret like GitLab: 400 for
        a missing required parameter; 422 ``{"message": [full messages]}`` for validation
        errors (name and external_url each unique per project, http(s) URL, branches of this
        project). `shared_secret` only exists from 17.3 (ignored before)."""
        checked = Params(ctx.params)
        name = checked.text("name", required=creating)
        url = checked.text("external_url", required=creating)
        branch_ids = checked.integers("protected_branch_ids")
        secret = checked.text("shared_secret") if self.at_least(17, 3) else None
        checked.check()
        updates: JSON = {}
        if name is not None:
            updates["name"] = name
        if url is not None:
            updates["external_url"] = url
        if branch_ids is not None:
            updates["protected_branch_ids"] = branch_ids
        if secret is not None:
            updates["shared_secret"] = secret
        merged = {**(current or {}), **updates}
        errors = []
        others = [c for c in project.checks.values() if current is None or c is not current]
        if not merged.get("name"):
            errors.append("Name can't be blank")
        elif any(c["name"] == merged["name"] for c in others):
            errors.append("Name has already been taken")
        if not re.match(r"^https?://[^\s/?#]+", merged.get("external_url") or ""):
            errors.append("External url is blocked: Only allowed schemes are http, https")
        elif any(c["external_url"] == merged["external_url"] for c in others):
            errors.append("External url has already been taken")
        if any(b not in project.protected_branches for b in merged.get("protected_branch_ids", [])):
            errors.append("all protected branches must exist within the project")
        if errors:
            raise ApiError(422, {"message": errors})
        return updates

    def _post_check(self, ctx: Ctx) -> web.Response:
        """POST /projects/:id/external_status_checks: 201 with the check."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        updates = self._check_params(ctx, project, creating=True)
        check = {
            "id": self._next_id(),
            "project_id": project.data["id"],
            "protected_branch_ids": [],
            "shared_secret": None,
            **updates,
        }
        project.checks[check["id"]] = check
        return web.json_response(self._render_check(project, check), status=201)

    def _put_check(self, ctx: Ctx) -> web.Response:
        """PUT /projects/:id/external_status_checks/:check_id: 200 with the check."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        check_id = ctx.args["check_id"]
        check = project.checks.get(int(check_id)) if check_id.isdigit() else None
        if check is None:
            raise record_not_found()
        check.update(self._check_params(ctx, project, creating=False, current=check))
        return web.json_response(self._render_check(project, check))

    def _delete_check(self, ctx: Ctx) -> web.Response:
        """DELETE /projects/:id/external_status_checks/:check_id: 204."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        check_id = ctx.args["check_id"]
        if not check_id.isdigit() or int(check_id) not in project.checks:
            raise record_not_found()
        del project.checks[int(check_id)]
        return web.Response(status=204)

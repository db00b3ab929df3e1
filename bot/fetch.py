"""Reading MR facts from GitLab: the snapshot itself plus exactly the optional facts asked for.

All optional facts are fetched concurrently, so an evaluation costs one round trip for the reads
however many kinds of facts its policies use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Mapping
from typing import Any

from bot.facts import ChangedFile, Commit, FactNeeds, MergeRequestFacts, User
from bot.gitlab import GitLab, GitLabError, project_ref
from bot.logs import get_logger

log = get_logger(__name__)


def _user(data: Any) -> User:
    if not isinstance(data, Mapping):
        return User(0, "")
    return User(int(data.get("id") or 0), str(data.get("username") or ""))


def _project_path(mr: Mapping[str, Any], fallback: str | None) -> str:
    references = mr.get("references")
    if isinstance(references, Mapping) and isinstance(references.get("full"), str):
        return references["full"].rsplit("!", 1)[0]
    web_url = mr.get("web_url")
    if isinstance(web_url, str) and "/-/merge_requests/" in web_url:
        return web_url.split("/-/merge_requests/")[0].split("://", 1)[-1].split("/", 1)[-1]
    return fallback or str(mr.get("project_id", ""))


def base_facts(mr: Mapping[str, Any], *, project_path: str | None = None) -> MergeRequestFacts:
    """The MR snapshot from `GET /projects/:id/merge_requests/:iid`, any GitLab version."""
    labels = mr.get("labels") or []
    pipeline = mr.get("head_pipeline") or mr.get("pipeline")
    draft = mr.get("draft")
    if draft is None:
        draft = mr.get("work_in_progress", False)
    return MergeRequestFacts(
        project_id=int(mr["project_id"]),
        project_path=_project_path(mr, project_path),
        iid=int(mr["iid"]),
        sha=str(mr.get("sha") or ""),
        title=str(mr.get("title") or ""),
        description=str(mr.get("description") or ""),
        labels=tuple(
            label if isinstance(label, str) else str(label.get("title", "")) for label in labels
        ),
        draft=bool(draft),
        state=str(mr.get("state") or ""),
        source_branch=str(mr.get("source_branch") or ""),
        target_branch=str(mr.get("target_branch") or ""),
        author=_user(mr.get("author")),
        pipeline_status=pipeline.get("status") if isinstance(pipeline, Mapping) else None,
        blocking_discussions_resolved=bool(mr.get("blocking_discussions_resolved", True)),
        has_conflicts=bool(mr.get("has_conflicts", False)),
        web_url=str(mr.get("web_url") or ""),
    )


def count_lines(diff: str) -> tuple[int, int]:
    """Added and removed lines of one file's unified diff (GitLab's `diff` starts at the hunk)."""
    additions = deletions = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++ "):
            additions += 1
        elif line.startswith("-") and not line.startswith("--- "):
            deletions += 1
    return additions, deletions


def changed_file(entry: Mapping[str, Any]) -> ChangedFile:
    additions, deletions = count_lines(str(entry.get("diff") or ""))
    return ChangedFile(
        old_path=str(entry.get("old_path") or ""),
        new_path=str(entry.get("new_path") or ""),
        new_file=bool(entry.get("new_file")),
        renamed_file=bool(entry.get("renamed_file")),
        deleted_file=bool(entry.get("deleted_file")),
        additions=additions,
        deletions=deletions,
    )


def _unresolved_threads(discussions: list[Mapping[str, Any]]) -> int:
    unresolved = 0
    for discussion in discussions:
        notes = discussion.get("notes") or []
        if any(
            n.get("resolvable") and not n.get("resolved") for n in notes if isinstance(n, Mapping)
        ):
            unresolved += 1
    return unresolved


class GroupDirectory:
    """Group memberships, cached briefly: they change rarely and every evaluation may ask.

    "A member of acme/security" means what people mean by it: a direct member, one inherited
    from a parent group (GitLab's members/all), or a member of any of its subgroups.
    """

    MAX_SUBGROUPS = 50  # bounds the requests one membership question can cost

    def __init__(self, gitlab: GitLab, *, ttl: float = 120.0) -> None:
        self._gitlab = gitlab
        self._ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group: str) -> frozenset[str]:
        key = group.lower()
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        own, subgroups = await asyncio.gather(
            self._gitlab.group_members(group), self._gitlab.descendant_groups(group)
        )
        if len(subgroups) > self.MAX_SUBGROUPS:
            log.warning(
                "too_many_subgroups", group=group, subgroups=len(subgroups), read=self.MAX_SUBGROUPS
            )
        below = await asyncio.gather(
            *(
                self._gitlab.direct_group_members(int(sub["id"]))
                for sub in subgroups[: self.MAX_SUBGROUPS]
                if isinstance(sub, dict) and "id" in sub
            )
        )
        members = frozenset(
            str(m.get("username", "")).lower()
            for m in itertools.chain(own, *below)
            if isinstance(m, dict) and m.get("state", "active") == "active"
        )
        self._cache[key] = (time.monotonic(), members)
        return members


async def _untruncated(
    gitlab: GitLab, project_id: int, iid: int, entries: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], bool]:
    """/changes cut the list (`overflow`, past the instance's diff_max_files): ask again with
    `access_raw_diffs=true`, which reads the diffs from Gitaly without those limits.

    When that fails too, the first list stands and is marked truncated, so size predicates treat
    their counts as lower bounds instead of passing on a partial diff.
    """
    path = f"/projects/{project_ref(project_id)}/merge_requests/{iid}/changes"
    try:
        answer = await gitlab.get(path, {"access_raw_diffs": "true"})
    except GitLabError as exc:
        log.warning("diff_truncated", project_id=project_id, iid=iid, error=exc.advice())
        return entries, True
    changes = list((answer or {}).get("changes") or [])
    if (answer or {}).get("overflow") or len(changes) < len(entries):
        log.warning("diff_truncated", project_id=project_id, iid=iid, files=len(entries))
        return entries, True
    log.info("diff_overflow_recovered", project_id=project_id, iid=iid, files=len(changes))
    return changes, False


# read_optional's job names -> the fact names FactNeeds.describe() uses.
_FACT_NAMES = {
    "changed_files": "diffs",
    "approved_by": "approvals",
    "commits": "commits",
    "unresolved_threads": "discussions",
}


async def read_optional(
    gitlab: GitLab, groups: GroupDirectory, project_id: int, iid: int, needs: FactNeeds
) -> dict[str, Any]:
    """Fetch the optional facts in `needs`, concurrently; returns MergeRequestFacts field values."""
    jobs: dict[str, Any] = {}
    if needs.diffs:
        jobs["changed_files"] = gitlab.changed_files(project_id, iid)
    if needs.approvals:
        jobs["approved_by"] = gitlab.approvals(project_id, iid)
    if needs.commits:
        jobs["commits"] = gitlab.commits(project_id, iid)
    if needs.discussions:
        jobs["unresolved_threads"] = gitlab.discussions(project_id, iid)
    group_names = sorted(needs.groups)
    for group in group_names:
        jobs[f"group:{group}"] = groups.members(group)
    if not jobs:
        return {}
    answers = await asyncio.gather(*jobs.values(), return_exceptions=True)
    results: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, GitLabError) and not answer.transient:
            # A refusal (403, 404...) will not go away by asking again: judge the policies that
            # need this fact as failed with GitLab's answer, and every other policy as usual.
            unreadable[_FACT_NAMES.get(job, job.replace("group:", "members of "))] = answer.advice()
        elif isinstance(answer, BaseException):
            raise answer  # transient: the whole evaluation is retried later
        else:
            results[job] = answer
    fields: dict[str, Any] = {}
    if unreadable:
        fields["unreadable"] = unreadable
    if "changed_files" in results:
        entries, truncated = results["changed_files"]
        if truncated:
            entries, truncated = await _untruncated(gitlab, project_id, iid, entries)
        fields["changed_files"] = tuple(changed_file(e) for e in entries)
        fields["changed_files_truncated"] = truncated
    if "approved_by" in results:
        fields["approved_by"] = tuple(_user(u) for u in results["approved_by"])
    if "commits" in results:
        fields["commits"] = tuple(
            Commit(
                sha=str(c.get("id", "")),
                message=str(c.get("message") or c.get("title") or ""),
                author_email=str(c.get("author_email") or ""),
            )
            for c in results["commits"]
        )
    if "unresolved_threads" in results:
        fields["unresolved_threads"] = _unresolved_threads(results["unresolved_threads"])
    readable_groups = [g for g in group_names if f"group:{g}" in results]
    if readable_groups:
        fields["group_members"] = {g.lower(): results[f"group:{g}"] for g in readable_groups}
    return fields


def merge_facts(facts: MergeRequestFacts, *optional: Mapping[str, Any]) -> MergeRequestFacts:
    fields: dict[str, Any] = {}
    for part in optional:
        for name, value in part.items():
            if name in ("group_members", "unreadable"):
                fields[name] = {**fields.get(name, getattr(facts, name)), **value}
            else:
                fields[name] = value
    return dataclasses.replace(facts, **fields) if fields else facts

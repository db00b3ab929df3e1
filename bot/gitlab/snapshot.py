"""The one read of a merge request: the MR, its status checks, and exactly the optional facts
the caller's policies need, all for one head SHA. `SnapshotReader.read` serves the service's
evaluations, `explain` and the details page alike (docs/architecture.md, "The snapshot").

The MR read says which head the facts must describe. A fact read answered before it might
describe the previous head (a push landing while the reads run), so facts are read after the MR
read, except when this reader already saw the same head before the round began: then MR, checks
and facts come in one concurrent round. Optional facts are fetched concurrently, and where
GitLab's answer may lag or be cut (README, "What the bot will not guess"), the facts say so
instead of pretending:

- a head pipeline built for an older head is not the head's pipeline (`pipeline_status` None);
- a diff GitLab cut or collapsed is completed from GraphQL `diffStats` where it can be, and
  otherwise marked as a lower bound (`paths_complete`, `file_count_exact`, `line_counts_exact`);
- approvals given before GitLab recorded the head, in a project that resets approvals on push,
  are `unsettled_approvers` until GitLab has had time to delete them;
- a read that answers for another head than the MR read raises `HeadMoved`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bot.gitlab.client import GitLab, GitLabError
from bot.gitlab.compat import draft_of, head_pipeline_of, project_path_of
from bot.logs import get_logger
from bot.policy.facts import (
    NO_NEEDS,
    ChangedFile,
    Commit,
    FactNeeds,
    GroupMembers,
    MergeRequestFacts,
    User,
)

log = get_logger(__name__)

# Who can approve a merge request: Developer (30) or higher (GitLab's `approve_merge_request`
# needs `update_merge_request`, i.e. developer_access).
APPROVER_ACCESS = 30
_ACCESS_NAMES = {5: "a Minimal Access member", 10: "a Guest", 15: "a Planner", 20: "a Reporter"}
# GitLab deletes approvals 10 s after it records a push (MergeRequestResetApprovalsWorker, run by
# Sidekiq): until this many seconds after the head's diff version, older approvals may vanish.
APPROVAL_SETTLE_SECONDS = 30.0
SETTINGS_TTL = 300.0  # project approval settings change rarely
MERGE_REF_SUFFIXES = ("/merge", "/train")  # merged-results and merge-train pipeline refs

DIFF_STATS_QUERY = """
query($fullPath: ID!, $iid: String!) {
  project(fullPath: $fullPath) {
    mergeRequest(iid: $iid) {
      diffRefs { headSha }
      diffStats { path additions deletions }
    }
  }
}
"""


class HeadMoved(Exception):
    """A read answered for another head than the one the evaluation judges: look again."""

    def __init__(self, sha: str, seen: str, source: str) -> None:
        self.sha, self.seen, self.source = sha, seen, source
        super().__init__(f"{source} answered for {seen[:8]}, the MR read for {sha[:8]}")


def _user(data: Any) -> User:
    if not isinstance(data, Mapping):
        return User(0, "")
    return User(int(data.get("id") or 0), str(data.get("username") or ""))


def base_facts(mr: Mapping[str, Any], *, project_path: str | None = None) -> MergeRequestFacts:
    """The MR snapshot from `GET /projects/:id/merge_requests/:iid`, any GitLab version.

    GitLab's `head_pipeline` is the stored association, which keeps the previous head's pipeline
    after a push until a pipeline for the new head exists: it counts only when built for `sha`
    (a merged-results pipeline, built on a merge commit, is checked by `FactReader`)."""
    labels = mr.get("labels") or []
    sha = str(mr.get("sha") or "")
    pipeline = head_pipeline_of(mr)
    for_head = pipeline is not None and pipeline.get("sha") == sha
    return MergeRequestFacts(
        project_id=int(mr["project_id"]),
        project_path=project_path_of(mr, project_path),
        iid=int(mr["iid"]),
        sha=sha,
        title=str(mr.get("title") or ""),
        description=str(mr.get("description") or ""),
        labels=tuple(
            label if isinstance(label, str) else str(label.get("title", "")) for label in labels
        ),
        draft=draft_of(mr),
        state=str(mr.get("state") or ""),
        source_branch=str(mr.get("source_branch") or ""),
        target_branch=str(mr.get("target_branch") or ""),
        author=_user(mr.get("author")),
        pipeline_status=str(pipeline.get("status")) if pipeline and for_head else None,
        stale_pipeline_sha=str(pipeline.get("sha") or "") if pipeline and not for_head else None,
        blocking_discussions_resolved=bool(mr.get("blocking_discussions_resolved", True)),
        has_conflicts=bool(mr.get("has_conflicts", False)),
        web_url=str(mr.get("web_url") or ""),
        changes_count=str(mr.get("changes_count") or ""),
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


def lines_hidden(entry: Mapping[str, Any]) -> bool:
    """GitLab did not show this file's lines: collapsed or too large (flagged from 18.4), or an
    empty diff, which before 18.4 may be either (or a rename, mode change or empty file)."""
    if entry.get("collapsed") or entry.get("too_large"):
        return True
    return not entry.get("diff") and "collapsed" not in entry


def _unresolved_threads(discussions: list[Mapping[str, Any]]) -> int:
    unresolved = 0
    for discussion in discussions:
        notes = discussion.get("notes") or []
        if any(
            n.get("resolvable") and not n.get("resolved") for n in notes if isinstance(n, Mapping)
        ):
            unresolved += 1
    return unresolved


def _eligibility(member: Mapping[str, Any], today: str) -> str | None:
    """Why a listed member cannot count as an approver, or None when they can."""
    if member.get("state", "active") != "active":
        return f"{member.get('state')} (not an active user)"
    if member.get("membership_state", "active") not in (None, "active"):
        return "awaiting approval of their membership"
    expires = member.get("expires_at")
    if isinstance(expires, str) and expires and expires < today:
        return "a member whose access has expired"
    access = int(member.get("access_level") or 0)
    if access < APPROVER_ACCESS:
        return _ACCESS_NAMES.get(access, f"below Developer (access level {access})")
    return None


class GroupDirectory:
    """Group memberships, cached briefly: they change rarely and every evaluation may ask.

    "A member of acme/security" means an active member with Developer access or more of the
    group itself or of one of its subgroups. GitLab's members/all is read too, only to tell
    who is listed through a parent or shared group (which counts with `inherited: true`).
    """

    MAX_SUBGROUPS = 50  # bounds the requests one membership question can cost

    def __init__(self, gitlab: GitLab, *, ttl: float = 120.0) -> None:
        self._gitlab = gitlab
        self._ttl = ttl
        self._cache: dict[str, tuple[float, GroupMembers]] = {}

    async def members(self, group: str) -> GroupMembers:
        key = group.lower()
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        own, everyone, subgroups = await asyncio.gather(
            self._gitlab.direct_group_members(group),
            self._gitlab.all_group_members(group),
            self._gitlab.descendant_groups(group),
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
        today = dt.date.today().isoformat()
        members: set[str] = set()
        ineligible: dict[str, str] = {}
        for member in itertools.chain(own, *below):
            if not isinstance(member, dict):
                continue
            name = str(member.get("username", "")).lower()
            why = _eligibility(member, today)
            if why is None:
                members.add(name)
            else:
                ineligible.setdefault(name, why)
        inherited = {
            str(m.get("username", "")).lower()
            for m in everyone
            if isinstance(m, dict) and _eligibility(m, today) is None
        } - members
        result = GroupMembers(
            frozenset(members),
            frozenset(inherited),
            {name: why for name, why in ineligible.items() if name not in members},
        )
        self._cache[key] = (time.monotonic(), result)
        return result


class ProjectFacts:
    """What the bot caches about projects and commits between evaluations: approval settings
    (a few minutes) and merge commits' parents (forever: commits never change)."""

    def __init__(self, gitlab: GitLab, *, ttl: float = SETTINGS_TTL) -> None:
        self._gitlab = gitlab
        self._ttl = ttl
        self._settings: dict[int | str, tuple[float, bool]] = {}
        self._parents: dict[tuple[int | str, str], tuple[str, ...]] = {}

    def resets_approvals(self, project_id: int | str) -> bool | None:
        """Cached: whether pushes delete approvals (None: not known lately)."""
        cached = self._settings.get(project_id)
        if cached and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        return None

    async def read_resets_approvals(self, project_id: int | str) -> bool:
        """Whether a push makes GitLab delete approvals here: `reset_approvals_on_push`, or
        `selective_code_owner_removals` (deletes some). A project whose settings cannot be
        read is assumed to reset them (the strict side)."""
        try:
            settings = await self._gitlab.approval_settings(project_id)
        except GitLabError as exc:
            if exc.transient:
                raise
            resets = True
        else:
            resets = bool(
                (settings or {}).get("reset_approvals_on_push", True)
                or (settings or {}).get("selective_code_owner_removals")
            )
        self._settings[project_id] = (time.monotonic(), resets)
        if len(self._settings) > 10_000:
            del self._settings[next(iter(self._settings))]
        return resets

    async def parents(self, project_id: int | str, sha: str) -> tuple[str, ...]:
        found = self._parents.get((project_id, sha))
        if found is None:
            commit = await self._gitlab.commit(project_id, sha)
            found = tuple(str(p) for p in (commit or {}).get("parent_ids") or ())
            self._parents[(project_id, sha)] = found
            if len(self._parents) > 10_000:
                del self._parents[next(iter(self._parents))]
        return found


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class FactReader:
    """Reads the optional facts an evaluation needs, for one head SHA."""

    def __init__(
        self,
        gitlab: GitLab,
        groups: GroupDirectory | None = None,
        projects: ProjectFacts | None = None,
        *,
        settle_seconds: float = APPROVAL_SETTLE_SECONDS,
    ) -> None:
        self.gitlab = gitlab
        self.groups = groups or GroupDirectory(gitlab)
        self.projects = projects or ProjectFacts(gitlab)
        self.settle_seconds = settle_seconds

    async def read(
        self, mr: Mapping[str, Any], facts: MergeRequestFacts, needs: FactNeeds
    ) -> dict[str, Any]:
        """Fetch the optional facts in `needs` for the MR `mr` (its JSON) whose base facts are
        `facts`; returns MergeRequestFacts field values. Raises HeadMoved when a read shows
        another head, GitLabError when GitLab failed transiently."""
        raw = await self.fetch(facts.project_id, facts.iid, needs)
        return await self.interpret(raw, mr, facts, needs)

    async def fetch(self, project_id: int | str, iid: int, needs: FactNeeds) -> dict[str, Any]:
        """The reads `needs` takes that depend on nothing but the MR's key, concurrently:
        {job: answer or the GitLabError it raised}. Transient errors are raised."""
        jobs: dict[str, Any] = {}
        for source in SOURCES:
            if source.wanted(needs):
                jobs.update(source.fetch(self, project_id, iid))
        for group in sorted(needs.groups):
            jobs[f"group:{group}"] = self.groups.members(group)
        if not jobs:
            return {}
        answers = await asyncio.gather(*jobs.values(), return_exceptions=True)
        raw: dict[str, Any] = {}
        for job, answer in zip(jobs, answers, strict=True):
            if isinstance(answer, BaseException) and not (
                isinstance(answer, GitLabError) and not answer.transient
            ):
                raise answer  # transient: the whole evaluation is retried later
            raw[job] = answer
        return raw

    async def interpret(
        self,
        raw: Mapping[str, Any],
        mr: Mapping[str, Any],
        facts: MergeRequestFacts,
        needs: FactNeeds,
    ) -> dict[str, Any]:
        """Turn fetched answers into fact fields for the head `facts.sha`, with the follow-up
        reads that depend on the MR read (diffStats of a cut diff, a merge commit's parents)."""
        unreadable: dict[str, str] = {}
        results: dict[str, Any] = {}
        for job, answer in raw.items():
            if isinstance(answer, GitLabError):
                # A refusal (403, 404...) will not go away by asking again: the rules that need
                # this fact are undecided with GitLab's answer; every other rule as usual.
                unreadable[_fact_name(job)] = answer.advice()
            else:
                results[job] = answer
        read = Read(self, results, mr, facts, needs, unreadable)
        fields: dict[str, Any] = {}
        for source in SOURCES:
            if source.wanted(needs):
                fields.update(await source.fields(read))
        groups = {
            job[len("group:") :]: answer
            for job, answer in results.items()
            if job.startswith("group:")
        }
        if groups:
            fields["group_members"] = {group.lower(): found for group, found in groups.items()}
        if unreadable:
            fields["unreadable"] = unreadable
        return fields

    async def _pipeline_fields(
        self, mr: Mapping[str, Any], facts: MergeRequestFacts, unreadable: dict[str, str]
    ) -> dict[str, Any]:
        """A head pipeline on a merge commit (merged results, merge train: `ref` ends in /merge
        or /train) counts for the head when the head is one of the commit's parents: GitLab's
        own `diff_head_pipeline` accepts it because its `source_sha` (not in the API) is the
        head. Any other pipeline for another SHA is stale (base_facts)."""
        pipeline = head_pipeline_of(mr)
        if (
            not facts.stale_pipeline_sha
            or pipeline is None
            or not str(pipeline.get("ref") or "").endswith(MERGE_REF_SUFFIXES)
        ):
            return {}
        try:
            parents = await self.projects.parents(facts.project_id, facts.stale_pipeline_sha)
        except GitLabError as exc:
            if exc.transient:
                raise
            unreadable["pipeline"] = exc.advice()
            return {}
        if facts.sha not in parents:
            return {}
        return {"pipeline_status": str(pipeline.get("status")), "stale_pipeline_sha": None}

    async def _diff_fields(
        self, facts: MergeRequestFacts, needs: FactNeeds, listing: tuple[list[Any], bool]
    ) -> dict[str, Any]:
        """The changed files, completed from GraphQL diffStats where GitLab's listing is cut
        (`changes_count` "1000+") or hides lines (collapsed, too large) and they matter."""
        entries, overflow = listing
        cut = overflow or facts.changes_count.endswith("+")
        hidden = any(lines_hidden(e) for e in entries)
        files = tuple(changed_file(e) for e in entries)
        fields: dict[str, Any] = {
            "changed_files": files,
            "paths_complete": not cut,
            "file_count_exact": not cut,
            "line_counts_exact": not cut and not hidden,
        }
        if not (cut or (needs.line_counts and hidden)):
            return fields
        stats = await self._diff_stats(facts)
        if stats is None:
            return fields
        listed = {f.new_path: f for f in files}
        fields["changed_files"] = tuple(
            dataclasses.replace(
                listed.get(path) or ChangedFile(old_path=path, new_path=path),
                additions=additions,
                deletions=deletions,
            )
            for path, additions, deletions in stats
        )
        # Every file and its lines are now known; a rename's old path only where GitLab listed
        # the file (diffStats shows new paths).
        fields.update(file_count_exact=True, line_counts_exact=True)
        return fields

    async def _diff_stats(self, facts: MergeRequestFacts) -> list[tuple[str, int, int]] | None:
        """GraphQL `diffStats` (from Gitaly, without the diff display limits), bound to the
        head it was computed for; None when GitLab will not give them."""
        try:
            data = await self.gitlab.graphql(
                DIFF_STATS_QUERY, {"fullPath": facts.project_path, "iid": str(facts.iid)}
            )
        except GitLabError as exc:
            if exc.transient:
                raise
            log.warning("diff_stats_unavailable", project=facts.project_path, error=exc.advice())
            return None
        merge_request = ((data.get("project") or {}).get("mergeRequest")) or {}
        head = ((merge_request.get("diffRefs") or {}).get("headSha")) or ""
        if head != facts.sha:
            raise HeadMoved(facts.sha, head, "GraphQL diffStats")
        stats = merge_request.get("diffStats")
        if not isinstance(stats, list):
            return None
        return [
            (str(s.get("path") or ""), int(s.get("additions") or 0), int(s.get("deletions") or 0))
            for s in stats
            if isinstance(s, Mapping)
        ]

    def _approval_fields(self, facts: MergeRequestFacts, results: Mapping[str, Any]) -> dict:
        """Approvers, and which of them GitLab may still delete after the latest push."""
        entries = results["approved_by"]
        fields: dict[str, Any] = {
            "approved_by": tuple(_user(e.get("user")) for e in entries),
        }
        resets = results.get("approval_resets", self.projects.resets_approvals(facts.project_id))
        if not resets:
            return fields
        if "newest_version" not in results:
            # GitLab refused to say when it recorded the head: which approvals may still go is
            # unknown, so none are given (rules needing them are undecided, with GitLab's answer).
            return {}
        version = results["newest_version"]
        if version is None:
            return fields  # no diff version at all: no push to settle
        head = str(version.get("head_commit_sha") or "")
        if head and head != facts.sha:
            raise HeadMoved(facts.sha, head, "the newest diff version")
        recorded = _parse_time(version.get("created_at"))
        if recorded is None:
            return fields
        gitlab_now = self.gitlab.server_clock.now()
        settles = recorded + self.settle_seconds
        if gitlab_now >= settles:
            return fields  # GitLab has had its time: what it shows now is settled
        unsettled = frozenset(
            str((e.get("user") or {}).get("username", "")).lower()
            for e in entries
            if (_parse_time(e.get("approved_at")) or 0.0) <= recorded
        )
        if unsettled:
            fields["unsettled_approvers"] = unsettled
            # GitLab's Date header is whole seconds, rounded down: this errs on the late side.
            fields["approvals_settle_at"] = facts.now + dt.timedelta(seconds=settles - gitlab_now)
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


# -- where each optional fact comes from ----------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """What a source turns into fact fields: the answers fetched (by job name), the MR as GitLab
    answered, its base facts, what is needed, and where refusals are noted."""

    reader: FactReader
    results: Mapping[str, Any]
    mr: Mapping[str, Any]
    facts: MergeRequestFacts
    needs: FactNeeds
    unreadable: dict[str, str]


@dataclass(frozen=True)
class Source:
    """How one optional fact is read. `flags`: the FactNeeds flags that ask for it (a refusal
    is filed under the first). `jobs`: the names of its reads. `fetch`: the GitLab reads that
    depend only on the MR's key, by job name (run concurrently with every other source's).
    `fields`: their answers turned into MergeRequestFacts fields for the head (it may read
    more)."""

    flags: tuple[str, ...]
    jobs: tuple[str, ...]
    fetch: Callable[[FactReader, int | str, int], dict[str, Awaitable[Any]]]
    fields: Callable[[Read], Awaitable[dict[str, Any]]]

    def wanted(self, needs: FactNeeds) -> bool:
        return any(getattr(needs, flag) for flag in self.flags)


async def _diffs(read: Read) -> dict[str, Any]:
    if "changed_files" not in read.results:
        return {}
    return await read.reader._diff_fields(read.facts, read.needs, read.results["changed_files"])


def _fetch_approvals(reader: FactReader, project: int | str, iid: int) -> dict[str, Any]:
    jobs: dict[str, Any] = {"approved_by": reader.gitlab.approvals(project, iid)}
    resets = reader.projects.resets_approvals(project)
    if resets is None:
        jobs["approval_resets"] = reader.projects.read_resets_approvals(project)
    if resets is not False:
        jobs["newest_version"] = reader.gitlab.newest_version(project, iid)
    return jobs


async def _approvals(read: Read) -> dict[str, Any]:
    if "approved_by" not in read.results:
        return {}
    return read.reader._approval_fields(read.facts, read.results)


async def _commits(read: Read) -> dict[str, Any]:
    if "commits" not in read.results:
        return {}
    return {
        "commits": tuple(
            Commit(
                sha=str(c.get("id", "")),
                message=str(c.get("message") or c.get("title") or ""),
                author_email=str(c.get("author_email") or ""),
            )
            for c in read.results["commits"]
        )
    }


async def _discussions(read: Read) -> dict[str, Any]:
    if "unresolved_threads" not in read.results:
        return {}
    return {"unresolved_threads": _unresolved_threads(read.results["unresolved_threads"])}


async def _pipeline(read: Read) -> dict[str, Any]:
    return await read.reader._pipeline_fields(read.mr, read.facts, read.unreadable)


# Every optional fact: adding one is a FactNeeds flag and a field in bot/policy/facts.py, and an
# entry here with its reader (docs/architecture.md#the-snapshot).
SOURCES: tuple[Source, ...] = (
    Source(
        ("diffs", "line_counts"),
        ("changed_files",),
        lambda r, p, i: {"changed_files": r.gitlab.changed_files(p, i)},
        _diffs,
    ),
    Source(
        ("approvals",),
        ("approved_by", "approval_resets", "newest_version"),
        _fetch_approvals,
        _approvals,
    ),
    Source(
        ("commits",), ("commits",), lambda r, p, i: {"commits": r.gitlab.commits(p, i)}, _commits
    ),
    Source(
        ("discussions",),
        ("unresolved_threads",),
        lambda r, p, i: {"unresolved_threads": r.gitlab.discussions(p, i)},
        _discussions,
    ),
    Source(("pipeline",), (), lambda r, p, i: {}, _pipeline),
)


def _fact_name(job: str) -> str:
    """The fact a job reads, as FactNeeds.describe() names it (the key of `unreadable`)."""
    if job.startswith("group:"):
        return f"members of {job[len('group:') :]}"
    return next((s.flags[0] for s in SOURCES if job in s.jobs), job)


# -- the snapshot --------------------------------------------------------------------------------

# What GitLab shows for a status check on the MR's head: passed/failed/pending (15.0+), or
# approved/pending (14.x).
Shown = Literal["passed", "failed", "pending", "approved"]


@dataclass(frozen=True)
class StatusCheck:
    """A status check GitLab lists for the MR (GET .../status_checks), with what it shows for
    the MR's head."""

    id: int
    name: str
    status: Shown
    external_url: str = ""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> StatusCheck:
        status = str(data.get("status") or "pending")
        return cls(
            id=int(data["id"]),
            name=str(data.get("name") or ""),
            status=status if status in ("passed", "failed", "approved") else "pending",  # type: ignore[arg-type]
            external_url=str(data.get("external_url") or ""),
        )


@dataclass(frozen=True)
class Snapshot:
    """One read of an MR: GitLab's answer for the MR, the facts (optional ones as asked), and
    the listed status checks, all for the head `facts.sha`."""

    mr: Mapping[str, Any]
    facts: MergeRequestFacts
    checks: tuple[StatusCheck, ...]
    # Why the checks could not be read (with `checks_optional`; the checks are then empty).
    checks_problem: str | None = None


# Given the MR's base facts and its listed checks: which optional facts to read (or an
# awaitable of them, when deciding needs a read of its own: repository policies).
NeedsFor = Callable[[MergeRequestFacts, Sequence[StatusCheck]], FactNeeds | Awaitable[FactNeeds]]
HEAD_MEMORY = 100_000  # MRs whose last head a reader remembers (oldest forgotten first)


def _no_facts(facts: MergeRequestFacts, checks: Sequence[StatusCheck]) -> FactNeeds:
    return NO_NEEDS


class SnapshotReader:
    """Reads MR snapshots, remembering the head it last read per MR (that lets a later read of
    the same head take one round)."""

    def __init__(self, gitlab: GitLab, facts: FactReader | None = None) -> None:
        self.gitlab = gitlab
        self.facts = facts or FactReader(gitlab)
        self._heads: dict[tuple[int | str, int], str] = {}

    async def read(
        self,
        project: int | str,
        iid: int,
        needs_for: NeedsFor = _no_facts,
        *,
        guess: FactNeeds = NO_NEEDS,
        hint_sha: str | None = None,
        project_path: str | None = None,
        now: dt.datetime | None = None,
        checks_optional: bool = False,
    ) -> Snapshot:
        """The MR, its checks and the facts `needs_for` asks (nothing more for a closed MR).

        `guess`: the facts to read alongside the MR when one round may do (this reader saw the
        head before, and `hint_sha`, what a delivery said the head is, names no other one).
        `checks_optional`: a refused status-check list (e.g. no Ultimate licence) is reported in
        `checks_problem` instead of raised. Raises GitLabError when GitLab failed, HeadMoved
        when a read showed another head."""
        key = (project, iid)
        known = self._heads.get(key)
        prefetch = guess if known is not None and hint_sha in (None, known) else NO_NEEDS
        mr, listed, raw = await asyncio.gather(
            self.gitlab.merge_request(project, iid),
            self.gitlab.status_checks(project, iid),
            self.facts.fetch(project, iid, prefetch),
            return_exceptions=True,
        )
        for answer in (mr, raw, listed):
            refused = isinstance(answer, GitLabError) and not answer.transient
            if isinstance(answer, BaseException) and not (
                answer is listed and checks_optional and refused
            ):
                raise answer
        problem = listed.advice() if isinstance(listed, GitLabError) else None
        listed = [] if problem is not None else listed
        facts = base_facts(mr, project_path=project_path)
        if now is not None:
            facts = dataclasses.replace(facts, now=now)
        self._remember(key, facts.sha)
        checks = tuple(StatusCheck.from_api(c) for c in listed if isinstance(c, Mapping))
        if facts.state != "opened":
            return Snapshot(mr, facts, checks, problem)
        asked = needs_for(facts, checks)
        needs = await asked if inspect.isawaitable(asked) else asked
        if facts.sha != known:
            prefetch, raw = NO_NEEDS, {}  # read before the head was known: maybe not its facts
        missing = needs - prefetch
        if missing:
            log.debug("fact_read", mr=f"{project}!{iid}", sha=facts.sha, needs=missing.describe())
            raw = {**raw, **await self.facts.fetch(project, iid, missing)}
        if needs or prefetch:
            facts = merge_facts(facts, await self.facts.interpret(raw, mr, facts, needs | prefetch))
        return Snapshot(mr, facts, checks, problem)

    def _remember(self, key: tuple[int | str, int], sha: str) -> None:
        self._heads.pop(key, None)
        self._heads[key] = sha
        if len(self._heads) > HEAD_MEMORY:
            del self._heads[next(iter(self._heads))]

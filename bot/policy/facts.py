"""What an evaluation knows about a merge request, and which parts of it a policy needs.

Policies are pure functions of `MergeRequestFacts`. The optional parts (diffs, approvals, commits,
discussions, group members) are only present when some applicable policy declared that it needs
them, so an evaluation reads from GitLab exactly what its policies use
(docs/architecture.md#fetch-only-what-is-needed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class User:
    """A GitLab user as far as policies care: who they are."""

    id: int
    username: str


@dataclass(frozen=True)
class ChangedFile:
    """One entry of the MR's diff. A rename counts under both paths; a deletion still counts."""

    old_path: str
    new_path: str
    new_file: bool = False
    renamed_file: bool = False
    deleted_file: bool = False
    additions: int = 0
    deletions: int = 0

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path this change touches (both sides of a rename)."""
        if self.old_path and self.old_path != self.new_path:
            return (self.old_path, self.new_path)
        return (self.new_path or self.old_path,)


@dataclass(frozen=True)
class Commit:
    """A commit of the MR."""

    sha: str
    message: str
    author_email: str = ""


@dataclass(frozen=True)
class GroupMembers:
    """Who of a group can count as one of its members for a policy.

    `members`: active members with at least Developer access (who can approve) of the group
    itself and of its subgroups. `inherited`: those GitLab also lists for the group through a
    parent group or a group shared into it (`members/all`), which count only with
    `inherited: true`. `ineligible`: listed people who never count, with why ("a Reporter").
    All usernames lower case.
    """

    members: frozenset[str] = frozenset()
    inherited: frozenset[str] = frozenset()
    ineligible: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FactNeeds:
    """The optional facts a policy (or a whole policy set) reads. Combine with `|`.

    `line_counts`: exact added/removed lines and file count, which GitLab's diff listing cannot
    always give (it collapses and cuts big diffs); `pipeline`: the pipeline built for the head.
    """

    diffs: bool = False
    line_counts: bool = False
    approvals: bool = False
    commits: bool = False
    discussions: bool = False
    pipeline: bool = False
    groups: frozenset[str] = frozenset()

    def __or__(self, other: FactNeeds) -> FactNeeds:
        return FactNeeds(
            **{name: getattr(self, name) or getattr(other, name) for name in _FLAGS},
            groups=self.groups | other.groups,
        )

    def __sub__(self, other: FactNeeds) -> FactNeeds:
        """What of these needs `other` (already fetched) does not cover."""
        return FactNeeds(
            **{name: getattr(self, name) and not getattr(other, name) for name in _FLAGS},
            groups=self.groups - other.groups,
        )

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in _FLAGS) or bool(self.groups)

    def describe(self) -> list[str]:
        """Names of the facts needed, for logs and `explain` (also the keys of `unreadable`)."""
        names = [name.replace("_", " ") for name in _FLAGS if getattr(self, name)]
        names += [f"members of {group}" for group in sorted(self.groups)]
        return names


_FLAGS = tuple(f.name for f in dataclasses.fields(FactNeeds) if f.name != "groups")
NO_NEEDS = FactNeeds()


@dataclass(frozen=True)
class MergeRequestFacts:
    """A snapshot of one MR, read from GitLab's API (never from a webhook payload)."""

    project_id: int
    project_path: str
    iid: int
    sha: str
    title: str = ""
    description: str = ""
    labels: tuple[str, ...] = ()
    draft: bool = False
    state: str = "opened"
    source_branch: str = ""
    target_branch: str = ""
    author: User = User(0, "")
    # The status of the pipeline built for `sha` (None: GitLab has none for this head yet).
    pipeline_status: str | None = None
    # The head pipeline GitLab shows when it was built for an older head (it lags a push).
    stale_pipeline_sha: str | None = None
    blocking_discussions_resolved: bool = True
    has_conflicts: bool = False
    web_url: str = ""
    # GitLab's count of changed files, "1000+" when it cut the diff at the instance's limits.
    changes_count: str = ""
    # Optional facts: None means "not fetched" (no applicable policy asked for them).
    changed_files: tuple[ChangedFile, ...] | None = None
    # How far the changed files can be trusted (GitLab cuts and collapses big diffs):
    # every touched path is listed (both sides of renames); len(changed_files) is the number of
    # changed files; every file's additions and deletions are exact. False: lower bounds.
    paths_complete: bool = True
    file_count_exact: bool = True
    line_counts_exact: bool = True
    approved_by: tuple[User, ...] | None = None
    # Approvers (lower case) whose approval predates the head while GitLab may still delete it
    # (it resets approvals about 10 s after a push, without a webhook), and when that doubt
    # ends on the evaluation's clock.
    unsettled_approvers: frozenset[str] = frozenset()
    approvals_settle_at: dt.datetime | None = None
    commits: tuple[Commit, ...] | None = None
    unresolved_threads: int | None = None
    # Group full path (lower case) -> who counts as a member, for the groups the policies name.
    group_members: Mapping[str, GroupMembers] = field(default_factory=dict)
    # Optional facts GitLab refused to give (403/404...): fact name (as FactNeeds.describe()
    # names it) -> what GitLab said. Policies needing them fail with that as the reason.
    unreadable: Mapping[str, str] = field(default_factory=dict)
    # The evaluation's clock, so time-based rules are deterministic and testable.
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

"""What an evaluation knows about a merge request, and which parts of it a policy needs.

Policies are pure functions of `MergeRequestFacts`. The optional parts (diffs, approvals, commits,
discussions, group members) are only present when some applicable policy declared that it needs
them, so an evaluation reads from GitLab exactly what its policies use (DESIGN principle 6).
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
class FactNeeds:
    """The optional facts a policy (or a whole policy set) reads. Combine with `|`."""

    diffs: bool = False
    approvals: bool = False
    commits: bool = False
    discussions: bool = False
    groups: frozenset[str] = frozenset()

    def __or__(self, other: FactNeeds) -> FactNeeds:
        return FactNeeds(
            diffs=self.diffs or other.diffs,
            approvals=self.approvals or other.approvals,
            commits=self.commits or other.commits,
            discussions=self.discussions or other.discussions,
            groups=self.groups | other.groups,
        )

    def __sub__(self, other: FactNeeds) -> FactNeeds:
        """What of these needs `other` (already fetched) does not cover."""
        return FactNeeds(
            diffs=self.diffs and not other.diffs,
            approvals=self.approvals and not other.approvals,
            commits=self.commits and not other.commits,
            discussions=self.discussions and not other.discussions,
            groups=self.groups - other.groups,
        )

    def __bool__(self) -> bool:
        return bool(self.diffs or self.approvals or self.commits or self.discussions or self.groups)

    def describe(self) -> list[str]:
        """Names of the facts needed, for logs and `explain`."""
        names = [
            f.name for f in dataclasses.fields(self) if f.name != "groups" and getattr(self, f.name)
        ]
        names += [f"members of {group}" for group in sorted(self.groups)]
        return names


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
    pipeline_status: str | None = None
    blocking_discussions_resolved: bool = True
    has_conflicts: bool = False
    web_url: str = ""
    # Optional facts: None means "not fetched" (no applicable policy asked for them).
    changed_files: tuple[ChangedFile, ...] | None = None
    # GitLab cut the list of changed files short (`overflow` of /changes): counts are lower bounds.
    changed_files_truncated: bool = False
    approved_by: tuple[User, ...] | None = None
    commits: tuple[Commit, ...] | None = None
    unresolved_threads: int | None = None
    # Group full path (lower case) -> usernames (lower case), for the groups the policies name.
    group_members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Optional facts GitLab refused to give (403/404...): fact name (as FactNeeds.describe()
    # names it) -> what GitLab said. Policies needing them fail with that as the reason.
    unreadable: Mapping[str, str] = field(default_factory=dict)
    # The evaluation's clock, so time-based rules are deterministic and testable.
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

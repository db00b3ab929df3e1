"""The units of work the queue coalesces, and the hints a delivery carries about them.

A hint is never trusted for a decision (DESIGN principle 1); it only lets the worker guess which
facts to fetch in the same round as the MR itself, and names what triggered the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MRKey:
    """One merge request: the unit of evaluation."""

    project_id: int
    iid: int

    def __str__(self) -> str:
        return f"{self.project_id}!{self.iid}"


@dataclass(frozen=True)
class BranchKey:
    """A branch whose pipeline changed: resolved to the open MRs that have it as source branch."""

    project_id: int
    branch: str

    def __str__(self) -> str:
        return f"{self.project_id}:{self.branch}"


@dataclass(frozen=True)
class Hint:
    """What a delivery said about the MR (untrusted), and why it was queued."""

    trigger: str = ""
    project_path: str | None = None
    target_branch: str | None = None
    source_branch: str | None = None
    sha: str | None = None

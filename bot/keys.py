"""The units of work the queue coalesces, and the hints a delivery carries about them.

A hint is never trusted for a decision (docs/architecture.md#payloads-are-hints); it only lets
the worker guess which facts to fetch in the same round as the MR itself, and names what
triggered the evaluation.
"""

from __future__ import annotations

import re
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
class PushKey(BranchKey):
    """A push to a branch (Push Hook): the repository policies it holds may have changed, so
    the MRs that target it may need judging again (docs/architecture.md#repository-policies).
    A BranchKey to the queue, but never equal to one: a push and a pipeline do not coalesce."""

    def __str__(self) -> str:
        return f"{self.project_id}:push:{self.branch}"


@dataclass(frozen=True)
class Hint:
    """What a delivery said about the MR (untrusted), and why it was queued."""

    trigger: str = ""
    project_path: str | None = None
    target_branch: str | None = None
    source_branch: str | None = None
    sha: str | None = None


_REFERENCE = re.compile(r"^(?P<project>[^!\s]+)!(?P<iid>\d+)$")


def parse_reference(text: str) -> tuple[int | str, int]:
    """`group/app!42` or `17!42` → (project, iid); raises ValueError with a usable message."""
    match = _REFERENCE.match(text.strip())
    if not match or int(match["iid"]) < 1:
        raise ValueError(f"{text!r} is not PROJECT!IID (e.g. group/app!42 or 17!42)")
    project = match["project"].strip("/")
    return (int(project) if project.isdigit() else project), int(match["iid"])

"""What the fake GitLab keeps in memory: projects, their MRs, status responses, groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass
class StatusResponse:
    """A row of `status_check_responses`: GitLab keeps every POST; the newest per SHA wins."""

    id: int
    check_id: int
    sha: str
    status: str  # passed / failed / pending ("approved" rows on 14.0-14.8)
    created_at: float  # FakeGitLab.now() (monotonic, shifted by advance())
    retried_at: float | None = None


@dataclass
class MergeRequest:
    """A merge request: `data` is its API shape (GET merge_requests/:iid); the rest is state."""

    data: JSON
    diffs: list[JSON] = field(default_factory=list)
    commits: list[JSON] = field(default_factory=list)
    approved_by: list[JSON] = field(default_factory=list)
    approvals_required: int = 0
    discussions: list[JSON] = field(default_factory=list)
    pipelines: list[JSON] = field(default_factory=list)  # newest first
    head_pipeline_id: int | None = None  # the stored column; see _update_head_pipeline
    responses: list[StatusResponse] = field(default_factory=list)  # oldest first
    head_since: float = 0.0  # when the current head SHA arrived (FakeGitLab.now())
    fixed_merge_status: str | None = None  # a detailed_merge_status the test pinned
    # Approval rows' created_at (wall clock, see FakeGitLab.wall) and patch_id_sha (the MR's
    # when they approved), by user id.
    approved_at: dict[int, float] = field(default_factory=dict)
    approval_patch: dict[int, str | None] = field(default_factory=dict)
    # The MR's diff versions (merge_request_diffs), oldest first; one per head GitLab recorded.
    versions: list[JSON] = field(default_factory=list)
    # The merge base, when a test made the source branch from a real commit (propose_files).
    base_sha: str | None = None
    # Approval resets GitLab has scheduled but not run yet: (due on FakeGitLab.now(), head SHA).
    pending_resets: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Project:
    data: JSON
    namespace_path: str
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    # GET /projects/:id/approvals (ee/lib/api/entities/approval_settings.rb)
    approval_settings: JSON = field(
        default_factory=lambda: {
            "approvers": [],
            "approver_groups": [],
            "approvals_before_merge": 0,
            "reset_approvals_on_push": True,  # GitLab's default for a new project
            "selective_code_owner_removals": False,
            "disable_overriding_approvers_per_merge_request": False,
            "merge_requests_author_approval": False,
            "merge_requests_disable_committers_approval": False,
            "require_password_to_approve": False,
        }
    )
    # Commits the repository holds beyond the MRs' own (merge commits of merged-results
    # pipelines), by SHA: GET /projects/:id/repository/commits/:sha.
    commits: dict[str, JSON] = field(default_factory=dict)
    checks: dict[int, JSON] = field(default_factory=dict)  # includes the secret; never rendered
    protected_branches: dict[int, JSON] = field(default_factory=dict)
    hooks: dict[int, JSON] = field(default_factory=dict)  # includes the token; never rendered
    # The repository (repository.py): branch name → commit SHA, commit SHA → {path: bytes}.
    branches: dict[str, str] = field(default_factory=dict)
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)


@dataclass
class Group:
    data: JSON
    members: list[JSON] = field(default_factory=list)
    # Groups invited into this one ("share group with group"): (group id, max access level).
    shared_with_groups: list[tuple[int, int]] = field(default_factory=list)

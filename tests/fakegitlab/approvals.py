"""Approvals: who approved, when, and the approval resets GitLab schedules after a push
(GET .../approvals, GET /projects/:id/approvals).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    Ctx,
    Route,
    Server,
    _parse_iso,
    iso,
)
from tests.fakegitlab.state import MergeRequest
from tests.fakegitlab.users import _user

# Approvals are deleted this long after a push in projects that reset them
# (ee/app/services/ee/merge_requests/refresh_service.rb:
# MergeRequestResetApprovalsWorker.perform_in(10.seconds, ...)).
APPROVAL_RESET_DELAY = 10.0


class Approvals(Server):
    """Who approved an MR and when, and the approval resets GitLab runs after a push."""

    # Seconds after a push when GitLab deletes approvals (a test may shorten it, with the
    # bot's APPROVAL_SETTLE_SECONDS shortened to match).
    approval_reset_delay: float = APPROVAL_RESET_DELAY

    def _approval_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", f"{mr}/approvals", self._get_approvals),
            Route("GET", "/projects/:id/approvals", self._get_project_approvals),
        ]

    def approve(self, project_id: int, iid: int, user: Mapping[str, Any]) -> None:
        """`user` approves now (one Approval row per user; its created_at is `approved_at`)."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        self._apply_resets(mr)
        if all(u["id"] != user["id"] for u in mr.approved_by):
            mr.approved_by.append(_user(user, self.url))
            # Nobody approves a head before GitLab recorded it: strictly after its version.
            recorded = _parse_iso(mr.versions[-1]["created_at"]) if mr.versions else 0.0
            mr.approved_at[int(user["id"])] = max(self.wall(), recorded + 0.001)
            mr.approval_patch[int(user["id"])] = (
                mr.versions[-1]["patch_id_sha"] if mr.versions else None
            )
        self._touch(project, mr)

    def unapprove(self, project_id: int, iid: int, user: Mapping[str, Any]) -> None:
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.approved_by = [u for u in mr.approved_by if u["id"] != user["id"]]
        mr.approved_at.pop(int(user["id"]), None)
        mr.approval_patch.pop(int(user["id"]), None)
        self._touch(project, mr)

    def approvers(self, project_id: int, iid: int) -> list[str]:
        """Who GitLab counts as having approved now (pending resets applied)."""
        mr = self.projects[project_id].mrs[iid]
        self._apply_resets(mr)
        return [u["username"] for u in mr.approved_by]

    def true_approvers(self, project_id: int, iid: int) -> list[str]:
        """Who will still have approved once every approval reset GitLab scheduled has run:
        the truth a merge gate must judge, whatever GitLab lists in the meantime."""
        mr = self.projects[project_id].mrs[iid]
        if not mr.pending_resets:
            return [u["username"] for u in mr.approved_by]
        current = mr.versions[-1]["patch_id_sha"] if mr.versions else None
        return [
            u["username"]
            for u in mr.approved_by
            if self.at_least(17, 0) and mr.approval_patch.get(u["id"]) == current
        ]

    def settle_approvals(self, project_id: int, iid: int) -> None:
        """Run the approval resets GitLab scheduled for this MR now (as if 10 s had passed for
        them), without moving the clock."""
        mr = self.projects[project_id].mrs[iid]
        mr.pending_resets = [(self.now(), sha) for _, sha in mr.pending_resets]
        self._apply_resets(mr)

    def _apply_resets(self, mr: MergeRequest) -> None:
        """Approval resets whose time has come (ee/app/services/merge_requests/
        reset_approvals_service.rb `delete_approvals`): before 17.0 every approval goes
        (`approvals.delete_all`); from 17.0 an approval whose patch_id_sha is the MR's current one
        stays (`with_invalid_patch_id_sha`), e.g. one given after the push."""
        due = [r for r in mr.pending_resets if r[0] <= self.now()]
        if not due:
            return
        mr.pending_resets = [r for r in mr.pending_resets if r[0] > self.now()]
        current = mr.versions[-1]["patch_id_sha"] if mr.versions else None
        keep = {
            user_id
            for user_id, patch in mr.approval_patch.items()
            if self.at_least(17, 0) and patch == current
        }
        mr.approved_by = [u for u in mr.approved_by if u["id"] in keep]
        mr.approved_at = {k: v for k, v in mr.approved_at.items() if k in keep}
        mr.approval_patch = {k: v for k, v in mr.approval_patch.items() if k in keep}

    def _get_project_approvals(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/approvals (ee/lib/api/project_approvals.rb, entity
        ee/lib/api/entities/approval_settings.rb)."""
        return web.json_response(dict(self._project(ctx).approval_settings))

    def _get_approvals(self, ctx: Ctx) -> web.Response:
        """GET .../approvals: `approved_by: [{user}]`, plus `approved_at` (the Approval row's
        created_at, lib/api/entities/approvals.rb) from 18.5 (GitLab MR !204605); approved when
        approvals_left is 0. Approval resets that are due are applied first."""
        _, mr = self._mr(ctx)
        self._apply_resets(mr)
        left = max(0, mr.approvals_required - len(mr.approved_by))
        data = {
            key: mr.data[key]
            for key in ("id", "iid", "project_id", "title", "description", "state")
        }
        data.update(
            created_at=mr.data["created_at"],
            updated_at=mr.data["updated_at"],
            merge_status=mr.data["merge_status"],
            approved=left == 0,
            approvals_required=mr.approvals_required,
            approvals_left=left,
            require_password_to_approve=False,
            approved_by=[self._approval_entity(mr, u) for u in mr.approved_by],
            suggested_approvers=[],
            approvers=[],
            approver_groups=[],
            user_has_approved=any(u["id"] == self.user["id"] for u in mr.approved_by),
            user_can_approve=self.can_approve,
            approval_rules_left=[],
            has_approval_rules=mr.approvals_required > 0,
            merge_request_approvers_available=True,
            multiple_approval_rules_available=True,
            invalid_approvers_rules=[],
        )
        return web.json_response(data)

    def _approval_entity(self, mr: MergeRequest, user: JSON) -> JSON:
        entity: JSON = {"user": user}
        if self.at_least(18, 5):
            entity["approved_at"] = iso(mr.approved_at.get(int(user["id"]), self.wall()))
        return entity

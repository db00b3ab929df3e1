"""Groups, their members and projects (GET /groups/:id, .../members[/all], .../projects,
.../descendant_groups).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    Ctx,
    Params,
    Route,
    Server,
    iso,
    not_found,
)
from tests.fakegitlab.state import Group
from tests.fakegitlab.users import _user


class Groups(Server):
    """Groups: members (direct, inherited, shared), projects, subgroups."""

    def _group_routes(self) -> list[Route]:
        return [
            Route("GET", "/groups/:id", self._get_group),
            Route("GET", "/groups/:id/members", self._list_group_members),
            Route("GET", "/groups/:id/members/all", self._list_all_group_members),
            Route("GET", "/groups/:id/projects", self._list_group_projects),
            Route("GET", "/groups/:id/descendant_groups", self._list_descendant_groups),
        ]

    def add_group(
        self,
        id: int,
        path: str,
        members: Iterable[Mapping[str, Any]] = (),
        parent: str | None = None,
    ) -> JSON:
        """Add a group. `path` is its full path ("acme/security") or, with `parent`, its last
        segment. Members are dicts id/username (+ name, access_level, default 30 = Developer).
        A group's ancestors are the groups whose full path is a prefix of its own."""
        full_path = path if parent is None or path.startswith(f"{parent}/") else f"{parent}/{path}"
        name = full_path.rsplit("/", 1)[-1]
        data: JSON = {
            "id": id,
            "name": name,
            "path": name,
            "full_name": " / ".join(full_path.split("/")),
            "full_path": full_path,
            "description": "",
            "visibility": "private",
            "web_url": f"{self.url}/groups/{full_path}",
            "parent_id": None,
            "created_at": iso(time.time()),
        }
        group = Group(data=data)
        self.groups[id] = group
        for member in members:
            self.add_group_member(id, member)
        return data

    def share_group(self, group_id: int, with_group_id: int, access_level: int = 30) -> None:
        """Invite group `with_group_id` into group `group_id` ("share group with group"): its
        members appear in `group_id`'s members/all, never in its direct members."""
        self.groups[group_id].shared_with_groups.append((with_group_id, access_level))

    def add_group_member(self, group_id: int, user: Mapping[str, Any]) -> JSON:
        """Member fields (lib/api/entities/member.rb, ee/lib/ee/api/entities/member.rb): the
        user's `state` (active, blocked...), `access_level` (default 30, Developer) and
        `membership_state` (active, awaiting)."""
        member = _user(user, self.url)
        member.update(
            access_level=int(user.get("access_level", 30)),
            created_at=iso(time.time()),
            expires_at=user.get("expires_at"),
            membership_state=user.get("membership_state", "active"),
        )
        group = self.groups[group_id]
        group.members = [m for m in group.members if m["id"] != member["id"]] + [member]
        return member

    def _group(self, ctx: Ctx) -> Group:
        ident = ctx.args["id"]
        group = self.groups.get(int(ident)) if ident.isdigit() else self._group_by_path(ident)
        if group is None:
            raise not_found("Group")
        return group

    def _group_by_path(self, full_path: str) -> Group | None:
        return next(
            (g for g in self.groups.values() if g.data["full_path"].lower() == full_path.lower()),
            None,
        )

    def _ancestors(self, group: Group) -> list[Group]:
        """Nearest first."""
        segments = group.data["full_path"].split("/")
        found = []
        for n in range(len(segments) - 1, 0, -1):
            ancestor = self._group_by_path("/".join(segments[:n]))
            if ancestor is not None:
                found.append(ancestor)
        return found

    def _render_group(self, group: Group) -> JSON:
        data = dict(group.data)
        ancestors = self._ancestors(group)
        data["parent_id"] = ancestors[0].data["id"] if ancestors else None
        return data

    def _get_group(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id (numeric id or URL-encoded full path)."""
        return web.json_response(self._render_group(self._group(ctx)))

    def _list_group_members(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/members (lib/api/members.rb → `source_members`): direct members
        only, whatever their access level (Minimal Access included in EE), user state
        (`state: blocked` is listed) or membership state (`awaiting` is listed); paginated."""
        return self._paginate(ctx, self._group(ctx).members)

    def _list_all_group_members(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/members/all (lib/api/helpers/members_helpers.rb
        `find_all_members_for_group`: GroupMembersFinder with [:inherited, :direct,
        :shared_from_groups]): direct members, members of every ancestor group, and members of
        groups shared into this group or an ancestor (their access capped at the share's);
        each user once with the highest access level; not subgroup members; paginated."""
        group = self._group(ctx)
        best: dict[int, JSON] = {}

        def offer(member: JSON, cap: int | None = None) -> None:
            if cap is not None and member["access_level"] > cap:
                member = {**member, "access_level": cap}
            known = best.get(member["id"])
            if known is None or member["access_level"] > known["access_level"]:
                best[member["id"]] = member

        for source in [group, *self._ancestors(group)]:
            for member in source.members:
                offer(member)
            for shared_id, access in source.shared_with_groups:
                for member in self.groups[shared_id].members:
                    offer(member, access)
        return self._paginate(ctx, list(best.values()))

    def _list_group_projects(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/projects: projects of the group; with include_subgroups=true also
        those of its descendants; paginated."""
        group = self._group(ctx)
        subgroups = Params(ctx.params).boolean("include_subgroups")
        full_path = group.data["full_path"].lower()
        projects = [
            p
            for p in sorted(self.projects.values(), key=lambda p: p.data["id"])
            if p.namespace_path.lower() == full_path
            or (subgroups and p.namespace_path.lower().startswith(full_path + "/"))
        ]
        return self._paginate(ctx, [self._render_project(p) for p in projects])

    def _list_descendant_groups(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/descendant_groups: every group below it, paginated."""
        group = self._group(ctx)
        prefix = group.data["full_path"].lower() + "/"
        found = [
            self._render_group(g)
            for g in sorted(self.groups.values(), key=lambda g: g.data["id"])
            if g.data["full_path"].lower().startswith(prefix)
        ]
        return self._paginate(ctx, found)

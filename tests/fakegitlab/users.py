"""The token's user and the users GitLab knows (GET /user, GET /users)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    Ctx,
    Route,
    Server,
)


def _user(user: Mapping[str, Any], base_url: str = "") -> JSON:
    """GitLab's UserBasic entity, filled in from a partial dict (id and username suffice)."""
    username = str(user.get("username", f"user{user.get('id', 0)}"))
    return {
        "id": int(user.get("id", 0)),
        "username": username,
        "name": user.get("name", username.replace(".", " ").title()),
        "state": user.get("state", "active"),
        "locked": False,
        "avatar_url": None,
        "web_url": f"{base_url}/{username}",
    }


class Users(Server):
    """The token's user and the users GitLab knows."""

    def _user_routes(self) -> list[Route]:
        return [
            Route("GET", "/user", self._get_user),
            Route("GET", "/users", self._list_users),
        ]

    def _get_user(self, ctx: Ctx) -> web.Response:
        """GET /user: the token's user."""
        return web.json_response(_user(self.user, self.url) | {"bot": True})

    def _list_users(self, ctx: Ctx) -> web.Response:
        """GET /users?username=: the user with that username (case-insensitive), or an empty
        list (lib/api/users.rb; UsersFinder by username). Users the fake knows: the token's,
        group members, MR authors and approvers, and those given to `add_user`."""
        known: dict[str, JSON] = {self.user["username"].lower(): self.user}
        for group in self.groups.values():
            known.update({m["username"].lower(): m for m in group.members})
        for project in self.projects.values():
            for mr in project.mrs.values():
                known[mr.data["author"]["username"].lower()] = mr.data["author"]
                known.update({u["username"].lower(): u for u in mr.approved_by})
        known.update({u["username"].lower(): u for u in self.extra_users})
        wanted = str(ctx.params.get("username") or "").lower()
        found = [_user(known[wanted], self.url)] if wanted in known else []
        return self._paginate(
            ctx, found if wanted else [_user(u, self.url) for u in known.values()]
        )

    def add_user(self, user: Mapping[str, Any]) -> None:
        """A user who exists in GitLab (GET /users) without being in any group or MR."""
        self.extra_users.append(_user(user, self.url))

"""Projects, their protected branches and who may administer them (GET/PUT /projects/:id)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    ApiError,
    Ctx,
    Params,
    Route,
    Server,
    iso,
    not_found,
    sha_for,
)
from tests.fakegitlab.state import Project


class Projects(Server):
    """Projects, their protected branches and settings."""

    def _project_routes(self) -> list[Route]:
        return [
            Route("GET", "/projects/:id", self._get_project),
            Route("PUT", "/projects/:id", self._put_project),
            Route("GET", "/projects/:id/protected_branches", self._list_protected_branches),
        ]

    def add_project(
        self,
        id: int,
        path: str,
        *,
        only_allow_merge_if_all_status_checks_passed: bool = False,
        **fields: Any,
    ) -> JSON:
        """Add a project `path` ("group/sub/name"); extra `fields` are merged into its API shape."""
        namespace, _, name = path.rpartition("/")
        data: JSON = {
            "id": id,
            "description": None,
            "name": name,
            "name_with_namespace": " / ".join(path.split("/")),
            "path": name,
            "path_with_namespace": path,
            "created_at": iso(time.time()),
            "default_branch": "main",
            "visibility": "private",
            "archived": False,
            "merge_method": "merge",
            "only_allow_merge_if_pipeline_succeeds": False,
            "only_allow_merge_if_all_discussions_are_resolved": False,
            "only_allow_merge_if_all_status_checks_passed": (
                only_allow_merge_if_all_status_checks_passed
            ),
            "permissions": {"project_access": {"access_level": 40}, "group_access": None},
        }
        data.update(fields)
        self.projects[id] = Project(data=data, namespace_path=namespace)
        return data

    def add_protected_branch(self, project_id: int, name: str) -> JSON:
        """Protect branch `name` (GitLab wildcards like ``release/*`` allowed)."""
        project = self.projects[project_id]
        for branch in project.protected_branches.values():
            if branch["name"] == name:
                return branch
        branch = {
            "id": self._next_id(),
            "name": name,
            "push_access_levels": [{"access_level": 40, "access_level_description": "Maintainers"}],
            "merge_access_levels": [
                {"access_level": 40, "access_level_description": "Maintainers"}
            ],
            "allow_force_push": False,
            "code_owner_approval_required": False,
        }
        project.protected_branches[branch["id"]] = branch
        return branch

    def _project(self, ctx: Ctx) -> Project:
        """`:id` is a numeric id or a URL-encoded path ("acme%2Fapp"), case-insensitive."""
        ident = ctx.args["id"]
        if ident.isdigit():
            project = self.projects.get(int(ident))
        else:
            project = next(
                (
                    p
                    for p in self.projects.values()
                    if p.data["path_with_namespace"].lower() == ident.lower()
                ),
                None,
            )
        if project is None:
            raise not_found("Project")
        return project

    def _render_project(self, project: Project) -> JSON:
        data = dict(project.data)
        namespace_path = project.namespace_path
        group = self._group_by_path(namespace_path)
        data["web_url"] = f"{self.url}/{project.data['path_with_namespace']}"
        data["namespace"] = {
            "id": group.data["id"] if group else int(sha_for(namespace_path)[:6], 16),
            "name": namespace_path.rsplit("/", 1)[-1],
            "path": namespace_path.rsplit("/", 1)[-1],
            "kind": "group" if group else "user",
            "full_path": namespace_path,
            "parent_id": self._render_group(group)["parent_id"] if group else None,
            "web_url": f"{self.url}/groups/{namespace_path}",
        }
        if not self.at_least(15, 5) or not self._has_ultimate(project):
            # EE exposes it only where external status checks are licensed
            data.pop("only_allow_merge_if_all_status_checks_passed", None)
        return data

    def _has_ultimate(self, project: Project) -> bool:
        return self.licensed and project.data["id"] not in self.unlicensed_projects

    @staticmethod
    def _require_maintainer(project: Project, *, status_check: bool = False) -> None:
        """Admin endpoints need Maintainer (40): the token user's level is the project's
        `permissions.project_access.access_level` (give `permissions=` to add_project to lower
        it). Hooks and project settings answer 403; GitLab's status check services answer
        401 ``{"message": ["Not allowed"]}`` instead (ExternalStatusChecks::*Service)."""
        access = (project.data.get("permissions") or {}).get("project_access") or {}
        if int(access.get("access_level") or 0) >= 40:
            return
        if status_check:
            raise ApiError(401, {"message": ["Not allowed"]})
        raise ApiError(403, {"message": "403 Forbidden"})

    def _get_project(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id. `only_allow_merge_if_all_status_checks_passed` (Ultimate) from
        15.5 on."""
        return web.json_response(self._render_project(self._project(ctx)))

    def _put_project(self, ctx: Ctx) -> web.Response:
        """PUT /projects/:id: updates the given settings. Unknown parameters are ignored, as
        Grape's declared_params drops them (so before 15.5 the status-check setting is a no-op);
        with no known parameter at all: 400 "at least one parameter must be provided"."""
        project = self._project(ctx)
        self._require_maintainer(project)
        checked = Params(ctx.params)
        flags = [
            "only_allow_merge_if_pipeline_succeeds",
            "only_allow_merge_if_all_discussions_are_resolved",
        ]
        if self.at_least(15, 5):
            flags.append("only_allow_merge_if_all_status_checks_passed")
        updates: JSON = {k: checked.boolean(k) for k in flags if checked.has(k)}
        for key in ("name", "description", "default_branch"):
            if checked.has(key):
                updates[key] = checked.text(key)
        checked.check()
        if not updates:
            raise ApiError(400, {"error": "at least one parameter must be provided"})
        project.data.update(updates)
        for mr in project.mrs.values():
            self._refresh(project, mr)
        return web.json_response(self._render_project(project))

    def _list_protected_branches(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/protected_branches: [{id, name, ...}], paginated."""
        project = self._project(ctx)
        branches = sorted(project.protected_branches.values(), key=lambda b: b["id"])
        return self._paginate(ctx, branches)

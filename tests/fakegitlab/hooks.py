"""Project webhooks (/projects/:id/hooks CRUD) and the deliveries GitLab makes for a note."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
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
    record_not_found,
)
from tests.fakegitlab.state import Project
from tests.fakegitlab.users import _user


class Hooks(Server):
    """Project webhooks, and the deliveries GitLab makes for a note."""

    def _hook_routes(self) -> list[Route]:
        return [
            Route("GET", "/projects/:id/hooks", self._list_hooks),
            Route("POST", "/projects/:id/hooks", self._post_hook),
            Route("GET", "/projects/:id/hooks/:hook_id", self._get_hook),
            Route("PUT", "/projects/:id/hooks/:hook_id", self._put_hook),
            Route("DELETE", "/projects/:id/hooks/:hook_id", self._delete_hook),
        ]

    def add_hook(self, project_id: int, url: str, **fields: Any) -> JSON:
        """Add a project webhook (what POST /projects/:id/hooks would create)."""
        project = self.projects[project_id]
        hook = self._new_hook(project, {"url": url, **fields})
        return self._render_hook(hook)

    def note_deliveries(self, project_id: int, iid: int, note: Mapping[str, Any]) -> list[JSON]:
        """The webhook deliveries GitLab makes for `note` on MR !iid: one per project hook that
        subscribed to it, as {"url", "headers", "payload"} (post them to the bot as they are).

        Follows app/services/notes/post_process_service.rb (`execute_note_hooks`: hooks_scope =
        confidential ? :confidential_note_hooks : :note_hooks), app/services/web_hook_service.rb
        (`hook_to_event`: X-Gitlab-Event "Confidential Note Hook" for :confidential_note_hooks,
        else "Note Hook"; X-Gitlab-Token is the hook's token) and lib/gitlab/data_builder/note.rb
        (object_kind "note", event_type "confidential_note" or "note"). An internal note reaches
        only hooks with `confidential_note_events` (lib/api/project_hooks.rb), a public one only
        hooks with `note_events`."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        confidential = bool(note.get("internal") or note.get("confidential"))
        flag = "confidential_note_events" if confidential else "note_events"
        event = "Confidential Note Hook" if confidential else "Note Hook"
        path = project.data["path_with_namespace"]
        payload = {
            "object_kind": "note",
            "event_type": "confidential_note" if confidential else "note",
            "user": _user(note.get("author") or self.user, self.url),
            "project_id": project_id,
            "project": {
                "id": project_id,
                "name": project.data["name"],
                "path_with_namespace": path,
                "web_url": f"{self.url}/{path}",
            },
            "object_attributes": {
                "id": note["id"],
                "note": note["body"],
                "noteable_type": "MergeRequest",
                "author_id": (note.get("author") or {}).get("id"),
                "project_id": project_id,
                "noteable_id": mr.data["id"],
                "system": bool(note.get("system")),
                "confidential": confidential,
                "internal": confidential,
                "action": "create",
                "url": f"{mr.data['web_url']}#note_{note['id']}",
            },
            "merge_request": {
                key: mr.data[key]
                for key in (
                    "id",
                    "iid",
                    "title",
                    "state",
                    "source_branch",
                    "target_branch",
                    "source_project_id",
                    "target_project_id",
                )
            },
        }
        deliveries = []
        for hook in sorted(project.hooks.values(), key=lambda h: h["id"]):
            if not hook.get(flag):
                continue
            headers = {"Content-Type": "application/json", "X-Gitlab-Event": event}
            if hook.get("token"):
                headers["X-Gitlab-Token"] = hook["token"]
            deliveries.append({"url": hook["url"], "headers": headers, "payload": payload})
        return deliveries

    def _new_hook(self, project: Project, params: Mapping[str, Any]) -> JSON:
        hook: JSON = {
            "id": self._next_id(),
            "url": params["url"],
            "project_id": project.data["id"],
            "created_at": iso(time.time()),
            "push_events": True,
            "push_events_branch_filter": "",
            "issues_events": False,
            "confidential_issues_events": False,
            "merge_requests_events": False,
            "tag_push_events": False,
            "note_events": False,
            "confidential_note_events": False,
            "job_events": False,
            "pipeline_events": False,
            "wiki_page_events": False,
            "deployment_events": False,
            "releases_events": False,
            "enable_ssl_verification": True,
            "token": None,
        }
        self._update_hook(hook, params)
        project.hooks[hook["id"]] = hook
        return hook

    @staticmethod
    def _update_hook(hook: JSON, params: Mapping[str, Any]) -> None:
        checked = Params(params)
        url = checked.text("url")
        token = checked.text("token")
        flags = {k: checked.boolean(k) for k in hook if isinstance(hook[k], bool)}
        checked.check()
        if url is not None:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ApiError(
                    400, {"message": {"url": ["is blocked: Only allowed schemes are http, https"]}}
                )
            hook["url"] = url
        if token is not None:
            hook["token"] = token
        hook.update({k: v for k, v in flags.items() if v is not None})

    @staticmethod
    def _render_hook(hook: JSON) -> JSON:
        return {k: v for k, v in hook.items() if k != "token"}

    def _find_hook(self, ctx: Ctx) -> tuple[Project, JSON]:
        project = self._project(ctx)
        self._require_maintainer(project)
        hook_id = ctx.args["hook_id"]
        hook = project.hooks.get(int(hook_id)) if hook_id.isdigit() else None
        if hook is None:
            raise record_not_found()
        return project, hook

    def _list_hooks(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/hooks: paginated; `token` is never returned. Maintainer only."""
        project = self._project(ctx)
        self._require_maintainer(project)
        hooks = sorted(project.hooks.values(), key=lambda h: h["id"])
        return self._paginate(ctx, [self._render_hook(h) for h in hooks])

    def _get_hook(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/hooks/:hook_id."""
        return web.json_response(self._render_hook(self._find_hook(ctx)[1]))

    def _post_hook(self, ctx: Ctx) -> web.Response:
        """POST /projects/:id/hooks: `url` required; event flags (push_events defaults to true,
        the others to false), token, enable_ssl_verification; 201."""
        project = self._project(ctx)
        self._require_maintainer(project)
        checked = Params(ctx.params)
        checked.text("url", required=True)
        checked.check()
        hook = self._new_hook(project, ctx.params)
        return web.json_response(self._render_hook(hook), status=201)

    def _put_hook(self, ctx: Ctx) -> web.Response:
        """PUT /projects/:id/hooks/:hook_id: change any of the POST parameters; 200."""
        _, hook = self._find_hook(ctx)
        self._update_hook(hook, ctx.params)
        return web.json_response(self._render_hook(hook))

    def _delete_hook(self, ctx: Ctx) -> web.Response:
        """DELETE /projects/:id/hooks/:hook_id: 204."""
        project, hook = self._find_hook(ctx)
        del project.hooks[hook["id"]]
        return web.Response(status=204)

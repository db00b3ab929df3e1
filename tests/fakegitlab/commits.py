"""Commits: an MR's (GET .../commits) and the repository's (GET .../repository/commits/:sha)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    Ctx,
    Route,
    Server,
    iso,
    not_found,
    sha_for,
)
from tests.fakegitlab.state import Project


class Commits(Server):
    """An MR's commits and the repository's commits."""

    def _commit_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", "/projects/:id/repository/commits/:sha", self._get_repository_commit),
            Route("GET", f"{mr}/commits", self._get_commits),
        ]

    def set_commits(self, project_id: int, iid: int, commits: Iterable[Mapping[str, Any]]) -> None:
        """Set the MR's commits, newest first as GitLab lists them. Each: id (or sha), message,
        and optionally title, author_name, author_email, created_at."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.commits = [_commit(c, self.url, project) for c in commits]
        self._touch(project, mr)

    def _get_commits(self, ctx: Ctx) -> web.Response:
        """GET .../commits: newest first, paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, mr.commits)

    def _get_repository_commit(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/repository/commits/:sha: any commit of the repository (the MRs'
        commits and merge commits of merged-results pipelines) with its parent_ids."""
        project = self._project(ctx)
        sha = ctx.args["sha"]
        found = project.commits.get(sha)
        if found is None:
            found = next(
                (c for mr in project.mrs.values() for c in mr.commits if c["id"] == sha), None
            )
        if found is None:
            raise not_found("Commit")
        return web.json_response(found)


def _commit(entry: Mapping[str, Any], base_url: str, project: Project) -> JSON:
    sha = str(entry.get("id") or entry.get("sha") or sha_for(repr(sorted(entry.items()))))
    message = str(entry.get("message", entry.get("title", "Update")))
    created = entry.get("created_at", iso(time.time()))
    author_name = entry.get("author_name", "Alice")
    author_email = entry.get("author_email", "alice@example.com")
    return {
        "id": sha,
        "short_id": sha[:8],
        "title": entry.get("title", message.split("\n", 1)[0]),
        "message": message,
        "author_name": author_name,
        "author_email": author_email,
        "authored_date": created,
        "committer_name": entry.get("committer_name", author_name),
        "committer_email": entry.get("committer_email", author_email),
        "committed_date": created,
        "created_at": created,
        "parent_ids": list(entry.get("parent_ids", [])),
        "trailers": {},
        "web_url": f"{base_url}/{project.data['path_with_namespace']}/-/commit/{sha}",
    }

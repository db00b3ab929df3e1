"""The repository: branches, trees and raw files (GET .../repository/{branches,tree,files}), and
the Push Hook payload GitLab sends when a branch moves.

A commit here is a whole snapshot of files (path → bytes) under a SHA; a branch names a commit.
Branches nobody set explicitly still exist where GitLab would have them: the project's default
branch and every MR's target and source branch (an MR cannot exist without both), each with an
empty tree, the source branch at the MR's head SHA.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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


def blob_id(data: bytes) -> str:
    """Git's blob id: sha1 of `blob <size>\\0<data>` (what the tree's `id` shows for a file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repository(Server):
    """Branches, trees, raw files and push deliveries."""

    def _repository_routes(self) -> list[Route]:
        return [
            Route("GET", "/projects/:id/repository/tree", self._get_tree),
            Route("GET", "/projects/:id/repository/files/:file_path/raw", self._get_raw_file),
            Route("GET", "/projects/:id/repository/branches/:branch", self._get_branch),
        ]

    # -- builders --------------------------------------------------------------------------------

    def commit_files(
        self,
        project_id: int,
        branch: str,
        files: Mapping[str, str | bytes | None],
        *,
        message: str = "Update files",
    ) -> str:
        """Commit on `branch` (created from the default branch when new): `files` are written
        (None deletes one); everything else stays. Returns the new commit's SHA. Sends no
        webhook: `push_hook` builds the delivery GitLab would send for it."""
        project = self.projects[project_id]
        default = project.data.get("default_branch", "main")
        before = self._branch_sha(project, branch) or self.branch_sha(project_id, default)
        tree = dict(self._tree_of(project, before))
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content.encode() if isinstance(content, str) else content
        sha = sha_for(f"{project_id}:{branch}:{before}:{sorted(tree.items())!r}:{message}")
        project.trees[sha] = tree
        project.branches[branch] = sha
        project.commits.setdefault(
            sha,
            {
                "id": sha,
                "short_id": sha[:8],
                "title": message,
                "message": message,
                "parent_ids": [before],
                "created_at": iso(self.wall()),
            },
        )
        return sha

    def propose_files(
        self, project_id: int, iid: int, files: Mapping[str, str | bytes | None]
    ) -> str:
        """MR !iid's source branch gets a commit on top of its target branch with `files`
        changed, and the MR's head moves there (as a push to the source branch does)."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        source, target = mr.data["source_branch"], mr.data["target_branch"]
        base = self.branch_sha(project_id, target)
        project.trees.setdefault(mr.data["sha"], dict(self._tree_of(project, base)))
        project.branches[source] = mr.data["sha"]
        sha = self.commit_files(project_id, source, files, message="Change the policies")
        mr.base_sha = base
        self.push(project_id, iid, sha)  # type: ignore[attr-defined]
        return sha

    def branch_sha(self, project_id: int, branch: str) -> str:
        """The commit `branch` points at (see the module docstring for implicit branches)."""
        project = self.projects[project_id]
        sha = self._branch_sha(project, branch)
        if sha is None:
            raise KeyError(f"no branch {branch!r} in project {project_id}")
        return sha

    def push_hook(self, project_id: int, branch: str, before: str, after: str) -> JSON:
        """The `Push Hook` payload for a push of `branch` from `before` to `after`, shaped as
        lib/gitlab/data_builder/push.rb `build` makes it (object_kind/event_name "push", `ref`
        "refs/heads/<branch>", `checkout_sha` = after, `project_id`, `project` hook_attrs,
        `commits` (at most 20 of them; 50 in older builders), `total_commits_count`). Deliver it
        with X-Gitlab-Event "Push Hook" (app/services/web_hook_service.rb `hook_to_event`)."""
        project = self.projects[project_id]
        path = project.data["path_with_namespace"]
        web_url = f"{self.url}/{path}"
        commit = project.commits.get(after, {"message": "Update", "created_at": iso(self.wall())})
        return {
            "object_kind": "push",
            "event_name": "push",
            "before": before,
            "after": after,
            "ref": f"refs/heads/{branch}",
            "ref_protected": True,
            "checkout_sha": after,
            "message": None,
            "user_id": 1,
            "user_name": "Alice",
            "user_username": "alice",
            "user_email": "",
            "user_avatar": None,
            "project_id": project_id,
            "project": {
                "id": project_id,
                "name": project.data["name"],
                "description": project.data.get("description"),
                "web_url": web_url,
                "avatar_url": None,
                "git_ssh_url": f"git@example.com:{path}.git",
                "git_http_url": f"{web_url}.git",
                "namespace": project.namespace_path.rsplit("/", 1)[-1],
                "visibility_level": 0,
                "path_with_namespace": path,
                "default_branch": project.data.get("default_branch", "main"),
            },
            "commits": [
                {
                    "id": after,
                    "message": commit.get("message", "Update"),
                    "title": commit.get("title", "Update"),
                    "timestamp": commit.get("created_at"),
                    "url": f"{web_url}/-/commit/{after}",
                    "author": {"name": "Alice", "email": "alice@example.com"},
                    "added": [],
                    "modified": [],
                    "removed": [],
                }
            ],
            "total_commits_count": 1,
            "push_options": {},
            "repository": {
                "name": project.data["name"],
                "url": f"git@example.com:{path}.git",
                "description": project.data.get("description"),
                "homepage": web_url,
                "git_http_url": f"{web_url}.git",
                "git_ssh_url": f"git@example.com:{path}.git",
                "visibility_level": 0,
            },
        }

    # -- state -----------------------------------------------------------------------------------

    def _branch_sha(self, project: Project, branch: str) -> str | None:
        if branch in project.branches:
            return project.branches[branch]
        for mr in project.mrs.values():
            if mr.data["source_branch"] == branch:
                return str(mr.data["sha"])
        targets = {mr.data["target_branch"] for mr in project.mrs.values()}
        if branch == project.data.get("default_branch", "main") or branch in targets:
            return sha_for(f"{project.data['id']}:{branch}:initial")
        return None

    def _tree_of(self, project: Project, ref: str | None) -> dict[str, bytes]:
        """The files at `ref` (a SHA or a branch name); KeyError when no such commit."""
        if ref is None:
            raise KeyError(ref)
        sha = self._branch_sha(project, ref) or ref
        if sha in project.trees:
            return project.trees[sha]
        for mr in project.mrs.values():
            # An MR's head, or its merge base, that no test committed files to: as if the
            # source branch was made from its target branch as it was when first looked at
            # (a commit never changes after).
            target = mr.data["target_branch"]
            synthetic_base = sha_for(f"base/{project.data['id']}/{target}")
            if sha in (mr.data["sha"], synthetic_base):
                current = project.trees.get(project.branches.get(target, ""), {})
                for pinned in (mr.data["sha"], synthetic_base):
                    project.trees.setdefault(pinned, dict(current))
                return project.trees[sha]
        known = {b for b in (self._branch_sha(project, n) for n in self._branch_names(project))}
        known |= {str(mr.data["sha"]) for mr in project.mrs.values()}
        if sha in known or sha in project.commits:
            return {}
        raise KeyError(ref)

    @staticmethod
    def _branch_names(project: Project) -> set[str]:
        names = set(project.branches) | {project.data.get("default_branch", "main")}
        for mr in project.mrs.values():
            names |= {mr.data["source_branch"], mr.data["target_branch"]}
        return names

    # -- routes ----------------------------------------------------------------------------------

    def _get_branch(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/repository/branches/:branch (lib/api/branches.rb: `find_branch!`,
        else 404 "404 Branch Not Found"; the branch name is one URL-encoded path segment,
        NO_SLASH_URL_PART_REGEX). Shape: lib/api/entities/branch.rb, `commit.id` the SHA."""
        project = self._project(ctx)  # type: ignore[attr-defined]
        name = ctx.args["branch"]
        sha = self._branch_sha(project, name)
        if sha is None:
            raise not_found("Branch")
        commit = project.commits.get(sha, {})
        path = project.data["path_with_namespace"]
        return web.json_response(
            {
                "name": name,
                "commit": {
                    "id": sha,
                    "short_id": sha[:8],
                    "created_at": commit.get("created_at", iso(self.wall())),
                    "parent_ids": commit.get("parent_ids", []),
                    "title": commit.get("title", "Initial commit"),
                    "message": commit.get("message", "Initial commit"),
                    "author_name": "Alice",
                    "author_email": "alice@example.com",
                    "web_url": f"{self.url}/{path}/-/commit/{sha}",
                },
                "merged": False,
                "protected": name == project.data.get("default_branch", "main"),
                "developers_can_push": False,
                "developers_can_merge": False,
                "can_push": True,
                "default": name == project.data.get("default_branch", "main"),
                "web_url": f"{self.url}/{path}/-/tree/{name}",
            }
        )

    def _get_tree(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/repository/tree (lib/api/repositories.rb): `ref` (default branch
        when absent), `path`, `recursive` (Boolean, default false), offset pagination (20 a page
        by default). An unknown ref: 404 "404 Tree Not Found" (`not_found!("Tree") unless
        tree_finder.commit_exists?`). A path that is no folder at that commit: recent GitLab
        raises from Gitaly (`rescue_not_found: false`) and answers 404 "404 invalid revision or
        path Not Found"; older GitLab answered `[]`. The fake takes the 404 (the strictest), and
        the bot reads either as "no such folder". Entries are Entities::TreeObject: id (the blob
        or tree id), name, type ("blob"/"tree"), path, mode; folders before files, by name."""
        project = self._project(ctx)  # type: ignore[attr-defined]
        checked = Params(ctx.params)
        ref = checked.text("ref") or project.data.get("default_branch", "main")
        folder = (checked.text("path") or "").strip("/")
        recursive = bool(checked.boolean("recursive"))
        checked.check()
        try:
            files = self._tree_of(project, ref)
        except KeyError:
            raise not_found("Tree") from None
        prefix = f"{folder}/" if folder else ""
        inside = {p: d for p, d in files.items() if p.startswith(prefix)}
        if folder and not inside:
            raise ApiError(404, {"message": "404 invalid revision or path Not Found"})
        entries: dict[str, JSON] = {}
        for path, data in inside.items():
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and sub not in entries:
                    entries[sub] = _entry(
                        sub, "tree", sha_for(f"tree:{sha_for(repr(inside))}:{sub}")
                    )
            if recursive or len(parts) == 1:
                entries[path] = _entry(path, "blob", blob_id(data))
        ordered = sorted(entries.values(), key=lambda e: (e["type"] != "tree", e["path"]))
        return self._paginate(ctx, ordered)

    def _get_raw_file(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/repository/files/:file_path/raw?ref= (lib/api/files.rb
        `assign_file_vars!`): `file_path` is one URL-encoded segment (`a%2Fb.yml`); an unknown
        ref answers 404 "404 Commit Not Found", a missing file 404 "404 File Not Found". `ref`
        is optional from 15.x (the default branch); the body is the file's bytes
        (`send_git_blob`), with X-Gitlab-Blob-Id and friends (`set_http_headers(blob_data)`)."""
        project = self._project(ctx)  # type: ignore[attr-defined]
        checked = Params(ctx.params)
        ref = checked.text("ref") or project.data.get("default_branch", "main")
        checked.check()
        try:
            files = self._tree_of(project, ref)
        except KeyError:
            raise not_found("Commit") from None
        path = ctx.args["file_path"]
        data = files.get(path)
        if data is None:
            raise not_found("File")
        return web.Response(
            body=data,
            content_type="text/plain",
            headers={
                "X-Gitlab-Blob-Id": blob_id(data),
                "X-Gitlab-File-Path": path,
                "X-Gitlab-Ref": ref,
                "X-Gitlab-Size": str(len(data)),
            },
        )


def _entry(path: str, kind: str, ident: str) -> JSON:
    return {
        "id": ident,
        "name": path.rsplit("/", 1)[-1],
        "type": kind,
        "path": path,
        "mode": "040000" if kind == "tree" else "100644",
    }

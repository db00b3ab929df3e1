"""An MR's change: diff versions, the instance's diff limits, GET .../diffs, .../changes and
.../versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    Ctx,
    Params,
    Route,
    Server,
    iso,
    sha_for,
)
from tests.fakegitlab.state import MergeRequest

# The instance's diff limits (application settings diff_max_files / diff_max_lines /
# diff_max_patch_bytes, defaults in app/models/commit.rb and application_setting.rb). GitLab stores
# an MR's diff only up to them (MergeRequestDiff#save_diffs with Commit.max_diff_options), and
# collapses files past a tenth of them when it presents a diff that is not expanded
# (Gitlab::Git::DiffCollection, DIFF_SAFE_LIMIT_FACTOR = 10).
MAX_DIFF_FILES = 1000


MAX_DIFF_LINES = 50_000


MAX_PATCH_BYTES = 200 * 1024


SAFE_LIMIT_FACTOR = 10


# /diffs pages hold at most 30 files, whatever per_page asks
# (lib/gitlab/diff/file_collection/paginated_merge_request_diff.rb, DEFAULT_PER_PAGE = 30).
MAX_DIFFS_PER_PAGE = 30


SEEDED_MR_AGE = 3600.0  # how long ago an MR added by add_mr was created (its first version)


def diff_file(
    path: str,
    *,
    additions: int = 1,
    deletions: int = 0,
    new_file: bool = False,
    deleted_file: bool = False,
    renamed_from: str | None = None,
) -> JSON:
    """An entry for `set_diffs`: a unified diff adding `additions`, removing `deletions` lines."""
    return {
        "old_path": renamed_from or path,
        "new_path": path,
        "new_file": new_file,
        "renamed_file": renamed_from is not None,
        "deleted_file": deleted_file,
        "diff": synth_diff(additions, deletions),
    }


def synth_diff(additions: int, deletions: int) -> str:
    """A unified diff hunk with exactly `additions` `+` lines and `deletions` `-` lines."""
    if not additions and not deletions:
        return ""
    header = f"@@ -1,{deletions} +1,{additions} @@\n"
    removed = "".join(f"-old line {n}\n" for n in range(1, deletions + 1))
    added = "".join(f"+new line {n}\n" for n in range(1, additions + 1))
    return header + removed + added


class Diffs(Server):
    """An MR's change and its diff versions, as GitLab stores and presents them."""

    def _diff_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", f"{mr}/diffs", self._get_diffs, since=(15, 7)),
            Route("GET", f"{mr}/changes", self._get_changes),
            Route("GET", f"{mr}/versions", self._get_versions),
        ]

    def set_diffs(self, project_id: int, iid: int, files: Iterable[Mapping[str, Any]]) -> None:
        """Set the MR's changes. Each file: old_path, new_path (or just `path`), new_file,
        renamed_file, deleted_file, diff (unified diff text); modes are filled in."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.diffs = [_diff_entry(f) for f in files]
        if mr.versions:  # a test's shortcut: the current head's version shows this change
            stored, overflow = _stored_diffs(mr.diffs)
            mr.versions[-1].update(
                state="overflow" if overflow else "collected",
                real_size=f"{len(stored)}+" if overflow else str(len(stored)),
            )
        self._touch(project, mr)

    def _add_version(self, mr: MergeRequest) -> None:
        """A merge_request_diff row for the current head (lib/api/entities/merge_request_diff.rb
        shape); `state` is "overflow" when the stored diff was cut at the instance's limits."""
        stored, overflow = _stored_diffs(mr.diffs)
        base = mr.data.get("diff_refs") or {}
        version = {
            "id": self._next_id(),
            "head_commit_sha": mr.data["sha"],
            "base_commit_sha": base.get("base_sha") or sha_for(f"base/{mr.data['target_branch']}"),
            "start_commit_sha": base.get("start_sha")
            or sha_for(f"base/{mr.data['target_branch']}"),
            # An MR a test adds has existed for a while (its first version is settled); a push
            # is recorded now.
            "created_at": iso(self.wall() - (SEEDED_MR_AGE if not mr.versions else 0.0)),
            "merge_request_id": mr.data["id"],
            "state": "overflow" if overflow else "collected",
            "real_size": f"{len(stored)}+" if overflow else str(len(stored)),
            "patch_id_sha": sha_for(f"patch/{mr.data['sha']}"),
        }
        mr.versions.append(version)

    def _diff_entity(self, entry: JSON) -> JSON:
        """lib/api/entities/diff.rb: `collapsed` and `too_large` only from 18.4 (per GitLab's
        Go client, MR 2767; older versions show the same empty `diff` with no flag)."""
        rendered = {k: v for k, v in entry.items() if k not in ("collapsed", "too_large")}
        if self.at_least(18, 4):
            rendered["collapsed"] = bool(entry.get("collapsed"))
            rendered["too_large"] = bool(entry.get("too_large"))
        return rendered

    def _get_diffs(self, ctx: Ctx) -> web.Response:
        """GET .../diffs (15.7+; a 404 route before), lib/api/merge_requests.rb: the STORED diff
        (`merge_request_diff.paginated_diffs`), so cut at the instance's diff limits with no
        overflow flag (only `changes_count` ends in "+"); at most 30 files a page whatever
        per_page says; files past the safe limits collapsed (empty `diff`)."""
        _, mr = self._mr(ctx)
        stored, _ = _stored_diffs(mr.diffs)
        shown = [self._diff_entity(e) for e in _presented_diffs(stored, expanded=False)]
        per_page = Params(ctx.params).integer("per_page") or MAX_DIFFS_PER_PAGE
        params = {**ctx.params, "per_page": min(per_page, MAX_DIFFS_PER_PAGE)}
        return self._paginate(replace(ctx, params=params), shown)

    def _get_changes(self, ctx: Ctx) -> web.Response:
        """GET .../changes (deprecated in 15.7), lib/api/entities/merge_request_changes.rb: the
        MR entity plus the stored diff as `changes` and `overflow`. With access_raw_diffs=true
        `overflow` is always false and nothing is collapsed, but it still reads the STORED diff
        (MergeRequestDiff#raw_diffs → load_diffs): files that were never stored do not come
        back, and too-large patches stay empty."""
        project, mr = self._mr(ctx)
        raw = bool(Params(ctx.params).boolean("access_raw_diffs"))
        data = self._render_mr(project, mr)
        stored, overflow = _stored_diffs(mr.diffs)
        shown = _presented_diffs(stored, expanded=raw)
        data["changes"] = [self._diff_entity(e) for e in shown]
        data["overflow"] = overflow and not raw
        return web.json_response(data)

    def _get_versions(self, ctx: Ctx) -> web.Response:
        """GET .../versions (lib/api/merge_request_diffs.rb): the MR's diff versions, newest
        first (`merge_request_diffs.order_id_desc`), paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, list(reversed(mr.versions)))


def _diff_entry(entry: Mapping[str, Any]) -> JSON:
    """A diff item as /diffs and /changes return it, filled in from a partial dict."""
    path = entry.get("path")
    new_path = entry.get("new_path", path)
    old_path = entry.get("old_path", new_path)
    new_file = bool(entry.get("new_file", False))
    deleted_file = bool(entry.get("deleted_file", False))
    diff = entry.get("diff")
    if diff is None:
        diff = synth_diff(int(entry.get("additions", 1)), int(entry.get("deletions", 0)))
    return {
        "old_path": old_path,
        "new_path": new_path,
        "a_mode": "0" if new_file else entry.get("a_mode", "100644"),
        "b_mode": "0" if deleted_file else entry.get("b_mode", "100644"),
        "new_file": new_file,
        "renamed_file": bool(entry.get("renamed_file", old_path != new_path)),
        "deleted_file": deleted_file,
        "diff": diff,
    }


def _line_count(entry: Mapping[str, Any]) -> int:
    return sum(
        1
        for line in str(entry.get("diff") or "").splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++ ", "--- "))
    )


def _line_count_of(entry: Mapping[str, Any], sign: str) -> int:
    other = "+++ " if sign == "+" else "--- "
    return sum(
        1
        for line in str(entry.get("diff") or "").splitlines()
        if line.startswith(sign) and not line.startswith(other)
    )


def _stored_diffs(files: Sequence[JSON]) -> tuple[list[JSON], bool]:
    """What GitLab stores of a change (MergeRequestDiff#save_diffs with Commit.max_diff_options):
    files in order until diff_max_files or diff_max_lines is reached, and whether it overflowed.
    A patch of diff_max_patch_bytes or more is kept with an empty diff and `too_large`
    (Gitlab::Git::Diff#too_large!, persisted). Approximate at the boundary, as in GitLab."""
    stored: list[JSON] = []
    lines = 0
    for entry in files:
        count = _line_count(entry)
        if len(stored) >= MAX_DIFF_FILES or lines + count > MAX_DIFF_LINES:
            return stored, True
        lines += count
        if len(str(entry.get("diff") or "").encode()) >= MAX_PATCH_BYTES:
            entry = {**entry, "diff": "", "too_large": True}
        stored.append(entry)
    return stored, False


def _presented_diffs(stored: Sequence[JSON], *, expanded: bool) -> list[JSON]:
    """How a stored diff is shown when not `expanded` (Gitlab::Git::DiffCollection with
    DIFF_SAFE_LIMIT_FACTOR): once the files shown reach a tenth of diff_max_files, their lines a
    tenth of diff_max_lines, or their bytes safe_max_files x 5 KB, every further file is
    collapsed (empty diff); so is any single patch of a tenth of diff_max_patch_bytes or more."""
    safe_files = MAX_DIFF_FILES // SAFE_LIMIT_FACTOR
    safe_lines = MAX_DIFF_LINES // SAFE_LIMIT_FACTOR
    safe_bytes = safe_files * 5 * 1024
    shown: list[JSON] = []
    files = lines = size = 0
    for entry in stored:
        entry = {"collapsed": False, "too_large": False, **entry}
        patch = str(entry.get("diff") or "")
        over = files >= safe_files or lines > safe_lines or size >= safe_bytes
        if not expanded and (over or len(patch.encode()) >= MAX_PATCH_BYTES // SAFE_LIMIT_FACTOR):
            entry.update(diff="", collapsed=True)
        else:
            files += 1
            lines += _line_count(entry)
            size += len(patch.encode())
        shown.append(entry)
    return shown

"""Notes and discussions on an MR (GET .../discussions, .../notes CRUD)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    ApiError,
    Ctx,
    Params,
    Route,
    Server,
    iso,
    not_found,
    sha_for,
)
from tests.fakegitlab.state import MergeRequest, Project
from tests.fakegitlab.users import _user


class Notes(Server):
    """Notes and discussions (threads) on merge requests."""

    def _note_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", f"{mr}/discussions", self._get_discussions),
            Route("GET", f"{mr}/notes", self._list_notes),
            Route("POST", f"{mr}/notes", self._post_note),
            Route("GET", f"{mr}/notes/:note_id", self._get_note),
            Route("PUT", f"{mr}/notes/:note_id", self._put_note),
            Route("DELETE", f"{mr}/notes/:note_id", self._delete_note),
        ]

    def add_discussion(
        self,
        project_id: int,
        iid: int,
        body: str = "Please fix this.",
        *,
        resolvable: bool = True,
        resolved: bool = False,
        author: Mapping[str, Any] | None = None,
        system: bool = False,
    ) -> JSON:
        """Start a thread. `blocking_discussions_resolved` is recomputed: false while any
        resolvable thread is unresolved."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        note = self._new_note(mr, body, author or {"id": 2, "username": "bob"}, system=system)
        note.update(
            type="DiscussionNote" if resolvable else None,
            resolvable=resolvable,
            resolved=resolved if resolvable else False,
            resolved_by=_user(self.user, self.url) if resolvable and resolved else None,
            resolved_at=note["created_at"] if resolvable and resolved else None,
        )
        discussion = {
            "id": sha_for(f"discussion-{note['id']}"),
            "individual_note": not resolvable,
            "notes": [note],
        }
        mr.discussions.append(discussion)
        self._recompute_discussions(mr)
        self._touch(project, mr)
        return discussion

    def resolve_discussion(
        self, project_id: int, iid: int, discussion_id: str, resolved: bool = True
    ) -> None:
        project = self.projects[project_id]
        mr = project.mrs[iid]
        for discussion in mr.discussions:
            if discussion["id"] == discussion_id:
                for note in discussion["notes"]:
                    if note["resolvable"]:
                        note["resolved"] = resolved
                        note["resolved_by"] = _user(self.user, self.url) if resolved else None
        self._recompute_discussions(mr)
        self._touch(project, mr)

    def add_note(
        self,
        project_id: int,
        iid: int,
        body: str,
        *,
        author: Mapping[str, Any] | None = None,
        system: bool = False,
        internal: bool = False,
    ) -> JSON:
        """A plain comment (an individual, non-resolvable note), by `author` or the token's user.
        `internal`: an internal note (GitLab's `confidential` column, shown as `internal` from
        15.0 and as `confidential` before)."""
        note = self.add_discussion(
            project_id, iid, body, resolvable=False, author=author or self.user, system=system
        )["notes"][0]
        note["internal"] = note["confidential"] = internal
        return note

    def _recompute_discussions(self, mr: MergeRequest) -> None:
        mr.data["blocking_discussions_resolved"] = all(
            n["resolved"] for d in mr.discussions for n in d["notes"] if n["resolvable"]
        )

    def _new_note(
        self, mr: MergeRequest, body: str, author: Mapping[str, Any], *, system: bool = False
    ) -> JSON:
        now = iso(time.time())
        return {
            "id": self._next_id(),
            "type": None,
            "body": body,
            "attachment": None,
            "author": _user(author, self.url),
            "created_at": now,
            "updated_at": now,
            "system": system,
            "noteable_id": mr.data["id"],
            "noteable_type": "MergeRequest",
            "project_id": mr.data["project_id"],
            "noteable_iid": mr.data["iid"],
            "resolvable": False,
            "resolved": False,
            "resolved_by": None,
            "resolved_at": None,
            "confidential": False,
            "internal": False,
        }

    def _all_notes(self, mr: MergeRequest) -> list[JSON]:
        return [n for d in mr.discussions for n in d["notes"]]

    def _find_note(self, ctx: Ctx) -> tuple[Project, MergeRequest, JSON]:
        project, mr = self._mr(ctx)
        note_id = ctx.args["note_id"]
        for note in self._all_notes(mr):
            if str(note["id"]) == note_id:
                return project, mr, note
        raise not_found("Note")

    def _get_discussions(self, ctx: Ctx) -> web.Response:
        """GET .../discussions: threads with their notes (resolvable/resolved), paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, mr.discussions)

    def _list_notes(self, ctx: Ctx) -> web.Response:
        """GET .../notes: sort desc (default) or asc, order_by created_at (default) or
        updated_at; includes system notes; paginated."""
        _, mr = self._mr(ctx)
        checked = Params(ctx.params)
        sort = checked.text("sort", values=["asc", "desc"]) or "desc"
        order_by = checked.text("order_by", values=["created_at", "updated_at"]) or "created_at"
        checked.check()
        notes = sorted(
            self._all_notes(mr), key=lambda n: (n[order_by], n["id"]), reverse=sort == "desc"
        )
        return self._paginate(ctx, notes)

    def _get_note(self, ctx: Ctx) -> web.Response:
        """GET .../notes/:note_id."""
        return web.json_response(self._find_note(ctx)[2])

    def _post_note(self, ctx: Ctx) -> web.Response:
        """POST .../notes: `body` required; 201 with the note, authored by the token's user."""
        project, mr = self._mr(ctx)
        checked = Params(ctx.params)
        body = checked.text("body", required=True)
        checked.check()
        note = self._new_note(mr, body or "", self.user)
        mr.discussions.append(
            {"id": sha_for(f"discussion-{note['id']}"), "individual_note": True, "notes": [note]}
        )
        self._touch(project, mr)
        return web.json_response(note, status=201)

    def _put_note(self, ctx: Ctx) -> web.Response:
        """PUT .../notes/:note_id: change `body`; only the author may (else 403)."""
        project, mr, note = self._find_note(ctx)
        checked = Params(ctx.params)
        body = checked.text("body", required=True)
        checked.check()
        if note["author"]["id"] != self.user["id"]:
            raise ApiError(403, {"message": "403 Forbidden"})
        note["body"] = body
        note["updated_at"] = iso(time.time())
        self._touch(project, mr)
        return web.json_response(note)

    def _delete_note(self, ctx: Ctx) -> web.Response:
        """DELETE .../notes/:note_id: 204; only the author may (else 403)."""
        project, mr, note = self._find_note(ctx)
        if note["author"]["id"] != self.user["id"]:
            raise ApiError(403, {"message": "403 Forbidden"})
        for discussion in mr.discussions:
            discussion["notes"] = [n for n in discussion["notes"] if n is not note]
        mr.discussions = [d for d in mr.discussions if d["notes"]]
        self._touch(project, mr)
        return web.Response(status=204)

"""A fake GitLab: a real aiohttp server speaking the REST API v4 endpoints the bot uses.

It keeps projects, merge requests, status checks, groups, hooks and notes in memory, answers with
GitLab's status codes, bodies, pagination headers and version-dependent behaviour, lets a test
inject faults (latency, 5xx, 429 + Retry-After, dropped connections, rate-limit headers), lets a
test act while a request is in flight, and records every call so a test can assert exactly what
the bot sent.

    fake = FakeGitLab(version="18.9.0")
    await fake.start()                      # http://127.0.0.1:PORT (API under /api/v4)
    fake.add_project(1, "acme/app")
    check = fake.add_status_check(1, "security-review")
    fake.add_mr(1, 42, title="feat: x", labels=["backend"])
    ...                                     # run the bot against fake.url with fake.token
    assert fake.check_status(1, 42, "security-review") == "passed"
    assert [c.json["status"] for c in fake.status_posts()] == ["passed"]
    await fake.close()

Standalone, for benchmarks (prints its URL on the first line of stdout):

    python -m tests.fakegitlab --port 0 --latency 0.02 --version 18.9.0 --seed-mrs 200 --checks a,b

The GitLab behaviour mimicked here is paraphrased from GitLab's source and docs, 14.0 to 18.x (see
DESIGN.md section 5). Where real GitLab varies in ways the fake cannot know (a feature flag, an
instance setting), the fake picks the strictest plausible behaviour and says so in a docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import itertools
import json
import math
import random
import re
import signal
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

JSON = dict[str, Any]
Callback = Callable[["Call"], Any]  # may return an awaitable

API_PREFIX = "/api/v4"
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
COUNT_LIMIT = 10_000  # past this GitLab stops counting: no x-total, x-total-pages, rel="last"
MAX_DIFF_FILES = 1000  # GitLab's default diff_max_files: /changes truncates and sets overflow
UNKNOWN_ROUTE = {"error": "404 Not Found"}


# --------------------------------------------------------------------------------------------
# Records and small helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the fake received: what the client sent and how it was answered.

    `path` is the raw path as sent (percent-encoding kept, e.g. ``/api/v4/projects/acme%2Fapp``),
    without the query string. `json` is the decoded body (JSON, or a dict for a form body), None
    when there was none. `status` is 0 while the request is in flight and for dropped connections.
    """

    method: str
    path: str
    query: dict[str, Any]
    json: Any
    status: int = 0
    headers: Mapping[str, str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    route: str = ""  # the matched route template, e.g. "GET /projects/:id/merge_requests/:iid"
    response: Any = None  # decoded JSON answer (a str for text answers, None when dropped)
    started: float = 0.0  # time.monotonic() on arrival
    finished: float = 0.0  # time.monotonic() when answered (or dropped)
    dropped: bool = False

    @property
    def params(self) -> dict[str, Any]:
        """Query and body parameters merged, as GitLab's API (Grape) sees them."""
        merged = dict(self.query)
        if isinstance(self.json, dict):
            merged.update(self.json)
        return merged


class ApiError(Exception):
    """Raised by handlers: answer with this status and body."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def not_found(what: str | None = None) -> ApiError:
    """GitLab's `not_found!(resource)`: ``{"message": "404 <Resource> Not Found"}``."""
    return ApiError(404, {"message": f"404 {what} Not Found" if what else "404 Not Found"})


def record_not_found() -> ApiError:
    """What GitLab answers when `Model.find(id)` fails (ActiveRecord::RecordNotFound)."""
    return ApiError(404, {"message": "404 Not found"})


def sha_for(seed: str) -> str:
    """A stable, realistic 40-hex commit SHA derived from `seed`."""
    return hashlib.sha1(seed.encode()).hexdigest()


def iso(ts: float) -> str:
    """GitLab's timestamp format: ``2024-05-01T10:00:00.123Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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


class Params:
    """Grape-style parameter checks: collect every problem, then answer 400 once.

    Grape's messages: ``sha is missing``, ``external_status_check_id is invalid``, ``status does
    not have a valid value``; several are joined with ", " in ``{"error": ...}``.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.errors: list[str] = []

    def has(self, name: str) -> bool:
        return name in self.params or f"{name}[]" in self.params

    def raw(self, name: str) -> Any:
        if name in self.params:
            return self.params[name]
        return self.params.get(f"{name}[]")

    def _missing(self, name: str, required: bool) -> bool:
        if not self.has(name):
            if required:
                self.errors.append(f"{name} is missing")
            return True
        return False

    def text(
        self, name: str, *, required: bool = False, values: Sequence[str] | None = None
    ) -> str | None:
        if self._missing(name, required):
            return None
        value = self.raw(name)
        if isinstance(value, list | dict):
            self.errors.append(f"{name} is invalid")
            return None
        value = "" if value is None else str(value)
        if values is not None and value not in values:
            self.errors.append(f"{name} does not have a valid value")
            return None
        return value

    def integer(self, name: str, *, required: bool = False) -> int | None:
        if self._missing(name, required):
            return None
        value = self.raw(name)
        if isinstance(value, bool):
            self.errors.append(f"{name} is invalid")
            return None
        try:
            return int(str(value).strip())
        except ValueError:
            self.errors.append(f"{name} is invalid")
            return None

    def boolean(self, name: str) -> bool | None:
        if self._missing(name, False):
            return None
        value = self.raw(name)
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"true", "t", "1", "yes", "y"}:
            return True
        if text in {"false", "f", "0", "no", "n"}:
            return False
        self.errors.append(f"{name} is invalid")
        return None

    def integers(self, name: str) -> list[int] | None:
        """An ``Array[Integer]`` that also accepts "1,2,3" (CommaSeparatedToIntegerArray)."""
        if self._missing(name, False):
            return None
        value = self.raw(name)
        items = value if isinstance(value, list) else str(value).split(",")
        try:
            return [int(str(v).strip()) for v in items if str(v).strip() != ""]
        except ValueError:
            self.errors.append(f"{name} is invalid")
            return None

    def check(self) -> None:
        if self.errors:
            raise ApiError(400, {"error": ", ".join(self.errors)})


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


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
    responses: list[StatusResponse] = field(default_factory=list)  # oldest first
    head_since: float = 0.0  # when the current head SHA arrived (16.6+ pending timeout)
    fixed_merge_status: str | None = None  # a detailed_merge_status the test pinned


@dataclass
class Project:
    data: JSON
    namespace_path: str
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    checks: dict[int, JSON] = field(default_factory=dict)  # includes the secret; never rendered
    protected_branches: dict[int, JSON] = field(default_factory=dict)
    hooks: dict[int, JSON] = field(default_factory=dict)  # includes the token; never rendered


@dataclass
class Group:
    data: JSON
    members: list[JSON] = field(default_factory=list)


@dataclass
class Fault:
    """A queued fault: answer `status`, drop the connection, or delay, for `times` requests."""

    kind: Literal["status", "drop", "delay"]
    times: int
    path_contains: str = ""
    method: str | None = None
    status: int = 0
    retry_after: int | None = None
    body: Any = None
    seconds: float = 0.0

    def matches(self, call: Call) -> bool:
        if self.times <= 0:
            return False
        if self.method and self.method.upper() != call.method:
            return False
        return _contains(call, self.path_contains)


@dataclass
class Watcher:
    """A test's `on_request` callback."""

    method: str
    path_contains: str
    callback: Callback
    when: Literal["before", "after"]
    times: int | None

    def matches(self, call: Call) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method not in ("", "*") and self.method.upper() != call.method:
            return False
        return _contains(call, self.path_contains)


def _contains(call: Call, needle: str) -> bool:
    return not needle or needle in call.path or needle in urllib.parse.unquote(call.path)


@dataclass
class Ctx:
    """What a route handler gets: the request, decoded path arguments and merged parameters."""

    request: web.Request
    args: dict[str, str]
    params: dict[str, Any]
    call: Call


Handler = Callable[[Ctx], web.StreamResponse]


@dataclass
class Route:
    method: str
    template: str  # GitLab's docs notation: /projects/:id/merge_requests/:merge_request_iid
    handler: Handler
    since: tuple[int, int] | None = None  # the route does not exist before this version
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        parts = [
            f"(?P<{seg[1:]}>[^/]+)" if seg.startswith(":") else re.escape(seg)
            for seg in self.template.strip("/").split("/")
        ]
        self.regex = re.compile("^/" + "/".join(parts) + "/?$")


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------


class FakeGitLab:
    """An in-memory GitLab behind a real HTTP server. See the module docstring."""

    def __init__(
        self, *, version: str = "18.9.0", token: str = "test-token", licensed: bool = True
    ) -> None:
        self.version = version
        self.token = token
        self.licensed = licensed  # False: Ultimate-only endpoints (status checks) answer 401
        self.unlicensed_projects: set[int] = set()  # these projects behave as licensed=False
        self.user: JSON = {"id": 99, "username": "status-bot", "name": "Status Bot"}
        self.can_approve = True  # False: the token's user may not approve MRs → status POST 403
        # Faults and limits
        self.latency = 0.0
        self.rate_limit_remaining: int | None = None
        self.rate_limit_limit = 2000
        self.rate_limit_reset_after = 60  # seconds, for RateLimit-Reset and Retry-After
        # Hostile pagination (a proxy or a broken GitLab): each page's `rel="next"` URL and
        # X-Next-Page value pass through these; given the honest value (None/"" on the last
        # page) and the page number, they return what to send (None: leave it out).
        self.next_link: Callable[[str | None, int], str | None] | None = None
        self.next_page_header: Callable[[str, int], str | None] | None = None
        # Status check behaviour
        self.pending_timeout: float | None = 120.0  # 16.6+: pending turns failed after this
        self.legacy_status_checks: bool | None = None  # None: decided by version (< 15.0)
        # Record
        self.calls: list[Call] = []
        self.errors: list[BaseException] = []  # exceptions raised in handlers or callbacks
        self.in_flight = 0
        self.max_in_flight = 0
        # State
        self.projects: dict[int, Project] = {}
        self.groups: dict[int, Group] = {}
        self.url = ""
        self._ids = itertools.count(100)
        self._faults: list[Fault] = []
        self._watchers: list[Watcher] = []
        self._random: random.Random | None = None
        self._random_rate = 0.0
        self._random_statuses: Sequence[int | str] = ()
        self._random_path = ""
        self._time_offset = 0.0
        self._runner: web.AppRunner | None = None
        self._routes = self._build_routes()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host`:`port` (0 = a free port) and return the base URL (without /api/v4)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGitLab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    # ---------------------------------------------------------------- version and time

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = [*re.findall(r"\d+", self.version), "0", "0"][:2]
        return int(major), int(minor)

    def at_least(self, major: int, minor: int = 0) -> bool:
        return self.version_tuple >= (major, minor)

    @property
    def legacy_status(self) -> bool:
        """14.0-14.8 semantics: no `status` param, any POST approves, the list shows approved.

        14.9-14.10 had passed/failed behind a feature flag that is off by default, so they count
        as legacy unless a test sets `legacy_status_checks = False`.
        """
        if self.legacy_status_checks is not None:
            return self.legacy_status_checks
        return not self.at_least(15, 0)

    def now(self) -> float:
        """The fake's clock: time.monotonic() plus whatever `advance()` added."""
        return time.monotonic() + self._time_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward, e.g. past the 16.6+ two-minute pending timeout."""
        self._time_offset += seconds

    def _next_id(self, explicit: int | None = None) -> int:
        if explicit is None:
            return next(self._ids)
        # Keep automatic ids clear of explicit ones.
        upcoming = next(self._ids)
        self._ids = itertools.count(max(upcoming, explicit + 1))
        return explicit

    # ---------------------------------------------------------------- state builders

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

    def add_status_check(
        self,
        project_id: int,
        name: str,
        *,
        external_url: str = "http://bot/webhook",
        protected_branches: list[str] | None = None,
        id: int | None = None,
        shared_secret: str | None = None,
    ) -> JSON:
        """Register an external status check (bypasses the API's validations, e.g. GitLab's
        uniqueness of `external_url` per project). Branch names are protected if they are not."""
        project = self.projects[project_id]
        branch_ids = [
            self.add_protected_branch(project_id, b)["id"] for b in protected_branches or []
        ]
        check = {
            "id": self._next_id(id),
            "name": name,
            "project_id": project_id,
            "external_url": external_url,
            "protected_branch_ids": branch_ids,
            "shared_secret": shared_secret,
        }
        project.checks[check["id"]] = check
        return self._render_check(project, check)

    def add_hook(self, project_id: int, url: str, **fields: Any) -> JSON:
        """Add a project webhook (what POST /projects/:id/hooks would create)."""
        project = self.projects[project_id]
        hook = self._new_hook(project, {"url": url, **fields})
        return self._render_hook(hook)

    def add_mr(self, project_id: int, iid: int, **fields: Any) -> JSON:
        """Add a merge request and return its stored API shape (mutable: later reads see changes).

        Fields: sha, title, description, labels, draft, state, source_branch, target_branch,
        author ({id, username, name}), head_pipeline ({status, ...} or None) or pipeline
        ("success"...), blocking_discussions_resolved, has_conflicts, detailed_merge_status (pins
        it; otherwise it is computed), diffs (list for set_diffs), commits, approved_by (users),
        approvals_required; anything else is stored as given.

        A title starting with "Draft:" makes the MR a draft, and draft=True prefixes the title,
        because GitLab derives one from the other.
        """
        project = self.projects[project_id]
        now = time.time()
        title = str(fields.pop("title", f"Change {iid}"))
        draft = fields.pop("draft", None)
        if draft is None:
            draft = _is_draft_title(title)
        elif draft and not _is_draft_title(title):
            title = f"Draft: {title}"
        path = project.data["path_with_namespace"]
        data: JSON = {
            "id": self._next_id(fields.pop("id", None)),
            "iid": iid,
            "project_id": project_id,
            "title": title,
            "description": fields.pop("description", ""),
            "state": fields.pop("state", "opened"),
            "created_at": iso(now),
            "updated_at": iso(now),
            "merged_by": None,
            "merge_user": None,
            "merged_at": None,
            "closed_by": None,
            "closed_at": None,
            "target_branch": fields.pop("target_branch", "main"),
            "source_branch": fields.pop("source_branch", f"feature-{iid}"),
            "user_notes_count": 0,
            "upvotes": 0,
            "downvotes": 0,
            "author": _user(fields.pop("author", {"id": 1, "username": "alice"}), self.url),
            "assignees": [],
            "assignee": None,
            "reviewers": [],
            "source_project_id": project_id,
            "target_project_id": project_id,
            "labels": list(fields.pop("labels", [])),
            "draft": bool(draft),
            "milestone": None,
            "merge_when_pipeline_succeeds": False,
            "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable",
            "sha": fields.pop("sha", None) or sha_for(f"{project_id}/{iid}/0"),
            "merge_commit_sha": None,
            "squash_commit_sha": None,
            "discussion_locked": None,
            "should_remove_source_branch": None,
            "force_remove_source_branch": True,
            "reference": f"!{iid}",
            "references": {"short": f"!{iid}", "relative": f"!{iid}", "full": f"{path}!{iid}"},
            "web_url": f"{self.url}/{path}/-/merge_requests/{iid}",
            "squash": False,
            "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": bool(fields.pop("has_conflicts", False)),
            "blocking_discussions_resolved": bool(
                fields.pop("blocking_discussions_resolved", True)
            ),
            "subscribed": False,
            "changes_count": "0",
            "pipeline": None,
            "head_pipeline": None,
            "diff_refs": None,
            "merge_error": None,
            "user": {"can_merge": True},
        }
        mr = MergeRequest(data=data, head_since=self.now())
        mr.fixed_merge_status = fields.pop("detailed_merge_status", None)
        mr.approvals_required = int(fields.pop("approvals_required", 0))
        diffs = fields.pop("diffs", None)
        commits = fields.pop("commits", None)
        approved_by = fields.pop("approved_by", [])
        pipeline_status = fields.pop("pipeline", None)
        head_pipeline = fields.pop("head_pipeline", None)
        data.update(fields)
        project.mrs[iid] = mr
        if diffs is not None:
            self.set_diffs(project_id, iid, diffs)
        self.set_commits(
            project_id,
            iid,
            commits if commits is not None else [{"id": data["sha"], "message": title}],
        )
        for user in approved_by:
            self.approve(project_id, iid, user)
        if head_pipeline is not None:
            extra = {k: v for k, v in head_pipeline.items() if k != "status"}
            self.set_pipeline(project_id, iid, head_pipeline.get("status", "success"), **extra)
        elif pipeline_status is not None:
            self.set_pipeline(project_id, iid, pipeline_status)
        self._refresh(project, mr)
        return data

    def mr(self, project_id: int, iid: int) -> JSON:
        """The stored API shape of an MR (mutable)."""
        return self.projects[project_id].mrs[iid].data

    @property
    def mrs(self) -> dict[tuple[int, int], JSON]:
        """{(project_id, iid): stored MR dict}; mutate a dict to change what the API returns."""
        return {
            (p, iid): mr.data
            for p, project in self.projects.items()
            for iid, mr in project.mrs.items()
        }

    def update_mr(self, project_id: int, iid: int, **fields: Any) -> JSON:
        """Change MR fields as a user would (title/draft kept in sync, updated_at bumped)."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if "detailed_merge_status" in fields:
            mr.fixed_merge_status = fields.pop("detailed_merge_status")
        if "title" in fields and "draft" not in fields:
            fields["draft"] = _is_draft_title(fields["title"])
        if fields.get("draft") and not _is_draft_title(fields.get("title", mr.data["title"])):
            fields["title"] = f"Draft: {fields.get('title', mr.data['title'])}"
        if "draft" in fields and not fields["draft"]:
            fields["title"] = _strip_draft(fields.get("title", mr.data["title"]))
        if "author" in fields:
            fields["author"] = _user(fields["author"], self.url)
        mr.data.update(fields)
        self._touch(project, mr)
        return mr.data

    def set_diffs(self, project_id: int, iid: int, files: Iterable[Mapping[str, Any]]) -> None:
        """Set the MR's changes. Each file: old_path, new_path (or just `path`), new_file,
        renamed_file, deleted_file, diff (unified diff text); modes are filled in."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.diffs = [_diff_entry(f) for f in files]
        self._touch(project, mr)

    def push(
        self,
        project_id: int,
        iid: int,
        sha: str,
        *,
        message: str | None = None,
        pipeline: str | None = None,
        reset_approvals: bool = False,
    ) -> None:
        """The source branch moves to `sha`: every status check is pending again for the new SHA
        (responses for the old SHA stay stored but no longer count), `head_pipeline` is null until
        a pipeline for the new SHA exists (`pipeline` creates one at once), and with `message` a
        commit is added on top. `reset_approvals` mimics "Remove all approvals when commits are
        added"."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.data["sha"] = sha
        mr.head_since = self.now()
        mr.data["head_pipeline"] = None
        mr.data["pipeline"] = None
        if message is not None:
            mr.commits.insert(0, _commit({"id": sha, "message": message}, self.url, project))
        if reset_approvals:
            mr.approved_by.clear()
        if pipeline is not None:
            self.set_pipeline(project_id, iid, pipeline)
        self._touch(project, mr)

    def set_pipeline(self, project_id: int, iid: int, status: str | None, **fields: Any) -> None:
        """Set the head pipeline's status (None: no pipeline). A pipeline for the current SHA is
        updated in place; otherwise a new one is created and listed first in /pipelines."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if status is None:
            mr.data["head_pipeline"] = None
            mr.data["pipeline"] = None
            self._touch(project, mr)
            return
        sha = fields.get("sha", mr.data["sha"])
        current = mr.data.get("head_pipeline")
        now = iso(time.time())
        if current is not None and current["sha"] == sha and "id" not in fields:
            current["status"] = status
            current["updated_at"] = now
            pipeline = current
        else:
            pid = self._next_id(fields.get("id"))
            path = project.data["path_with_namespace"]
            pipeline = {
                "id": pid,
                "iid": len(mr.pipelines) + 1,
                "project_id": project_id,
                "sha": sha,
                "ref": f"refs/merge-requests/{iid}/head",
                "status": status,
                "source": fields.get("source", "merge_request_event"),
                "created_at": now,
                "updated_at": now,
                "web_url": f"{self.url}/{path}/-/pipelines/{pid}",
            }
            mr.pipelines.insert(0, pipeline)
        for entry in mr.pipelines:
            if entry["id"] == pipeline["id"]:
                entry.update(status=status, updated_at=now)
        mr.data["head_pipeline"] = pipeline if sha == mr.data["sha"] else None
        mr.data["pipeline"] = _pipeline_basic(pipeline) if mr.data["head_pipeline"] else None
        self._touch(project, mr)

    def approve(self, project_id: int, iid: int, user: Mapping[str, Any]) -> None:
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if all(u["id"] != user["id"] for u in mr.approved_by):
            mr.approved_by.append(_user(user, self.url))
        self._touch(project, mr)

    def unapprove(self, project_id: int, iid: int, user: Mapping[str, Any]) -> None:
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.approved_by = [u for u in mr.approved_by if u["id"] != user["id"]]
        self._touch(project, mr)

    def set_commits(self, project_id: int, iid: int, commits: Iterable[Mapping[str, Any]]) -> None:
        """Set the MR's commits, newest first as GitLab lists them. Each: id (or sha), message,
        and optionally title, author_name, author_email, created_at."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.commits = [_commit(c, self.url, project) for c in commits]
        self._touch(project, mr)

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
    ) -> JSON:
        """A plain comment (an individual, non-resolvable note), by `author` or the token's user."""
        return self.add_discussion(
            project_id, iid, body, resolvable=False, author=author or self.user, system=system
        )["notes"][0]

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

    def add_group_member(self, group_id: int, user: Mapping[str, Any]) -> JSON:
        member = _user(user, self.url)
        member.update(
            access_level=int(user.get("access_level", 30)),
            created_at=iso(time.time()),
            expires_at=None,
            membership_state="active",
        )
        group = self.groups[group_id]
        group.members = [m for m in group.members if m["id"] != member["id"]] + [member]
        return member

    # ---------------------------------------------------------------- status check helpers

    def set_status(
        self, project_id: int, iid: int, check_id: int, sha: str, status: str
    ) -> StatusResponse:
        """Record a status response as if someone POSTed it (no validation: any SHA, any
        status), e.g. a forged or hand-set status the bot must heal."""
        mr = self.projects[project_id].mrs[iid]
        row = StatusResponse(self._next_id(), check_id, sha, status, self.now())
        mr.responses.append(row)
        return row

    def check_status(self, project_id: int, iid: int, check_name: str) -> str:
        """What GET .../status_checks shows now for `check_name` (KeyError if it is not listed)."""
        return self.statuses(project_id, iid)[check_name]

    def statuses(self, project_id: int, iid: int) -> dict[str, str]:
        """{check name: status} for every check GET .../status_checks would list now."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        return {c["name"]: self._status_of(mr, c) for c in self._applicable_checks(project, mr)}

    def status_responses(self, project_id: int, iid: int) -> list[StatusResponse]:
        """Every stored status response row of the MR, oldest first."""
        return list(self.projects[project_id].mrs[iid].responses)

    def merge_status(self, project_id: int, iid: int) -> str:
        """The MR's `detailed_merge_status` as GitLab would compute it now."""
        project = self.projects[project_id]
        return self._detailed_merge_status(project, project.mrs[iid])

    # ---------------------------------------------------------------- call record

    def calls_to(self, method: str, path_contains: str) -> list[Call]:
        """Calls with this method ("*" for any) whose path contains `path_contains` (matched
        against the raw path and its percent-decoded form)."""
        return [
            c
            for c in self.calls
            if (method in ("*", "") or c.method == method.upper()) and _contains(c, path_contains)
        ]

    def status_posts(self) -> list[Call]:
        """POSTs to .../status_check_responses that GitLab accepted (201)."""
        return [c for c in self.calls_to("POST", "/status_check_responses") if c.status == 201]

    def reset_calls(self) -> None:
        self.calls.clear()
        self.max_in_flight = self.in_flight

    # ---------------------------------------------------------------- faults

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        method: str | None = None,
        retry_after: int | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` (before auth and routing).
        Bodies are GitLab's: 429 is Rack::Attack's text "Retry later" (+ Retry-After when
        given), 500 is JSON, 502/503/504 are the HTML pages of the proxy in front of Rails."""
        self._faults.append(
            Fault("status", times, path_contains, method, status, retry_after, body)
        )

    def drop_connections(
        self, *, times: int = 1, path_contains: str = "", method: str | None = None
    ) -> None:
        """Close the connection without answering the next `times` matching requests.

        Note: aiohttp's client transparently retries an idempotent request (GET, PUT, DELETE)
        once when the server disconnects, so making a GET fail needs `times=2`."""
        self._faults.append(Fault("drop", times, path_contains, method))

    def delay(
        self,
        seconds: float,
        *,
        times: int = 1,
        path_contains: str = "",
        method: str | None = None,
    ) -> None:
        """Add `seconds` of latency to the next `times` matching requests (e.g. to hit a
        client timeout)."""
        self._faults.append(Fault("delay", times, path_contains, method, seconds=seconds))

    def fail_randomly(
        self,
        rate: float,
        statuses: Sequence[int | str] = (500, 502, "reset"),
        seed: int = 0,
        path_contains: str = "",
    ) -> None:
        """Fail each API request with probability `rate` (0 turns it off), with a status chosen
        from `statuses` ("reset" drops the connection). Seeded: the sequence is reproducible."""
        self._random = random.Random(seed)
        self._random_rate = rate
        self._random_statuses = tuple(statuses)
        self._random_path = path_contains

    def clear_faults(self) -> None:
        self._faults.clear()
        self._random_rate = 0.0

    def on_request(
        self,
        method: str,
        path_contains: str,
        callback: Callback,
        *,
        when: Literal["before", "after"] = "before",
        times: int | None = None,
    ) -> None:
        """Run `callback(call)` (sync or async) for each matching request (at most `times`).

        "before": after the call is recorded and before it is answered, so the answer reflects
        whatever the callback changed (e.g. push a new SHA while the bot posts a status: 409).
        "after": once the answer has been sent, before the next request on that connection."""
        self._watchers.append(Watcher(method, path_contains, callback, when, times))

    # ================================================================ HTTP plumbing

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        if raw_path.startswith("/_fake/"):
            return self._control(request, raw_path)
        body, decoded, body_error = await _read_body(request)
        call = Call(
            method=request.method,
            path=raw_path,
            query=_query_dict(request),
            json=decoded,
            headers=CIMultiDict(request.headers),
            body=body,
            started=time.monotonic(),
        )
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            try:
                response = await self._respond(request, call, body_error)
            except Exception as error:  # a bug in the fake or in a test's callback
                self.errors.append(error)
                traceback.print_exception(error, file=sys.stderr)
                response = web.json_response({"message": "500 Internal Server Error"}, status=500)
            if response is None:  # dropped
                call.dropped = True
                call.finished = time.monotonic()
                return web.Response(status=499)  # never reaches the client
            call.status = response.status
            call.finished = time.monotonic()
            if isinstance(response, web.Response) and response.body is not None:
                call.response = _decode(response)
            after = self._matching_watchers(call, "after")
            if after:
                with contextlib.suppress(ConnectionError):
                    await response.prepare(request)
                    await response.write_eof()
                for watcher in after:
                    try:
                        await _run_callback(watcher.callback, call)
                    except Exception as error:
                        self.errors.append(error)
                        traceback.print_exception(error, file=sys.stderr)
            return response
        finally:
            self.in_flight -= 1

    async def _respond(
        self, request: web.Request, call: Call, body_error: str | None
    ) -> web.StreamResponse | None:
        if self.latency:
            await asyncio.sleep(self.latency)
        for watcher in self._matching_watchers(call, "before"):
            await _run_callback(watcher.callback, call)
        fault = await self._injected_fault(request, call)
        if fault is not None:
            return None if fault == "drop" else fault
        rate_headers: dict[str, str] = {}
        if self.rate_limit_remaining is not None:
            if self.rate_limit_remaining <= 0:
                return self._throttled()
            self.rate_limit_remaining -= 1
            rate_headers = self._rate_limit_headers()
        try:
            if not self._authenticated(request):
                raise ApiError(401, {"message": "401 Unauthorized"})
            if body_error is not None:
                raise ApiError(400, {"error": body_error})
            response = self._route(request, call)
        except ApiError as error:
            response = web.json_response(error.body, status=error.status, headers=error.headers)
        response.headers.update(rate_headers)
        return response

    def _matching_watchers(self, call: Call, when: str) -> list[Watcher]:
        matched = [w for w in self._watchers if w.when == when and w.matches(call)]
        for watcher in matched:
            if watcher.times is not None:
                watcher.times -= 1
        return matched

    async def _injected_fault(
        self, request: web.Request, call: Call
    ) -> web.StreamResponse | Literal["drop"] | None:
        for fault in self._faults:
            if not fault.matches(call):
                continue
            fault.times -= 1
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
                continue
            if fault.kind == "drop":
                _drop(request)
                return "drop"
            return _fault_response(fault.status, fault.retry_after, fault.body)
        if (
            self._random is not None
            and self._random_rate > 0
            and _contains(call, self._random_path)
            and self._random.random() < self._random_rate
        ):
            choice = self._random.choice(self._random_statuses)
            if choice == "reset":
                _drop(request)
                return "drop"
            return _fault_response(int(choice), None, None)
        return None

    def _rate_limit_headers(self) -> dict[str, str]:
        reset = int(time.time()) + self.rate_limit_reset_after
        remaining = max(self.rate_limit_remaining or 0, 0)
        return {
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": str(self.rate_limit_limit),
            "RateLimit-Observed": str(self.rate_limit_limit - remaining),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset),
            "RateLimit-ResetTime": formatdate(reset, usegmt=True),
        }

    def _throttled(self) -> web.Response:
        """Rack::Attack's throttle answer: 429, text "Retry later", Retry-After, RateLimit-*."""
        response = web.Response(status=429, text="Retry later\n", content_type="text/plain")
        response.headers["Retry-After"] = str(self.rate_limit_reset_after)
        response.headers.update(self._rate_limit_headers())
        return response

    def _authenticated(self, request: web.Request) -> bool:
        """`PRIVATE-TOKEN: <token>`, `Authorization: Bearer <token>` or `?private_token=`."""
        if request.headers.get("PRIVATE-TOKEN") == self.token:
            return True
        if request.headers.get("Authorization", "") == f"Bearer {self.token}":
            return True
        return request.query.get("private_token") == self.token

    def _route(self, request: web.Request, call: Call) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        if not raw.startswith(API_PREFIX + "/"):
            raise ApiError(404, UNKNOWN_ROUTE)
        sub = raw[len(API_PREFIX) :]
        path_matched = False
        for route in self._routes:
            match = route.regex.match(sub)
            if match is None:
                continue
            if route.since is not None and self.version_tuple < route.since:
                continue  # the endpoint does not exist yet in this version
            path_matched = True
            if route.method != request.method:
                continue
            call.route = f"{route.method} {route.template}"
            args = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
            params = dict(call.query)
            if isinstance(call.json, dict):
                params.update(call.json)
            return route.handler(Ctx(request, args, params, call))
        if path_matched:
            raise ApiError(405, {"error": "405 Not Allowed"})
        raise ApiError(404, UNKNOWN_ROUTE)

    # ---------------------------------------------------------------- control endpoints

    def _control(self, request: web.Request, raw_path: str) -> web.Response:
        """Unauthenticated, unrecorded endpoints for a benchmark harness in another process:
        GET /_fake/stats, POST /_fake/reset_calls, GET /_fake/statuses/:project/:iid,
        POST /_fake/push/:project/:iid?sha=..., GET /_fake/calls?since=N (the calls from index
        N on, with their time.monotonic() arrival and answer times: CLOCK_MONOTONIC is
        system-wide on Linux, so another process can compare them with its own clock),
        POST /_fake/latency?seconds=X (change the latency added per request)."""
        parts = raw_path.strip("/").split("/")[1:]
        try:
            if parts == ["calls"] and request.method == "GET":
                since = max(0, int(request.query.get("since", "0")))
                calls = self.calls[since:]
                return web.json_response(
                    {
                        "next": since + len(calls),
                        "calls": [
                            {
                                "method": c.method,
                                "path": urllib.parse.unquote(c.path),
                                "route": c.route,
                                "status": c.status,
                                "started": c.started,
                                "finished": c.finished,
                            }
                            for c in calls
                        ],
                    }
                )
            if parts == ["latency"] and request.method == "POST":
                self.latency = max(0.0, float(request.query["seconds"]))
                return web.json_response({"latency": self.latency})
            if parts == ["stats"] and request.method == "GET":
                by_route: dict[str, int] = {}
                for call in self.calls:
                    key = call.route or f"{call.method} {call.path}"
                    by_route[key] = by_route.get(key, 0) + 1
                return web.json_response(
                    {
                        "calls": len(self.calls),
                        "status_posts": len(self.status_posts()),
                        "in_flight": self.in_flight,
                        "max_in_flight": self.max_in_flight,
                        "by_route": by_route,
                    }
                )
            if parts == ["reset_calls"] and request.method == "POST":
                self.reset_calls()
                return web.json_response({"ok": True})
            if len(parts) == 3 and parts[0] == "statuses" and request.method == "GET":
                return web.json_response(self.statuses(int(parts[1]), int(parts[2])))
            if len(parts) == 3 and parts[0] == "push" and request.method == "POST":
                project_id, iid = int(parts[1]), int(parts[2])
                sha = request.query.get("sha") or sha_for(f"{project_id}/{iid}/{time.time()}")
                self.push(project_id, iid, sha)
                return web.json_response({"sha": sha})
        except (KeyError, ValueError) as error:
            return web.json_response({"error": repr(error)}, status=404)
        return web.json_response(UNKNOWN_ROUTE, status=404)

    # ================================================================ lookups and rendering

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

    def _mr(self, ctx: Ctx) -> tuple[Project, MergeRequest]:
        project = self._project(ctx)
        iid_text = ctx.args["merge_request_iid"]
        if not iid_text.isdigit():
            raise ApiError(400, {"error": "merge_request_iid is invalid"})
        mr = project.mrs.get(int(iid_text))
        if mr is None:
            raise not_found("Merge Request")
        return project, mr

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

    def _render_mr(self, project: Project, mr: MergeRequest, *, basic: bool = False) -> JSON:
        """The MR entity for this version: `draft` from 15.0, `work_in_progress` until 16.x
        (simplified from GitLab, whose exact cut-overs vary: the bot must accept either),
        `detailed_merge_status` from 15.6. `basic` is the list entity (no pipeline fields)."""
        data = json.loads(json.dumps(mr.data))  # a deep copy: a client must not alias state
        draft = data.pop("draft")
        if self.at_least(15, 0):
            data["draft"] = draft
        if not self.at_least(17, 0):
            data["work_in_progress"] = draft
        if self.at_least(15, 6):
            data["detailed_merge_status"] = self._detailed_merge_status(project, mr)
        else:
            data.pop("detailed_merge_status", None)
        if basic:
            for key in ("pipeline", "head_pipeline", "diff_refs", "changes_count", "user"):
                data.pop(key, None)
            data.pop("merge_error", None)
            data.pop("subscribed", None)
        return data

    def _refresh(self, project: Project, mr: MergeRequest) -> None:
        """Recompute the derived fields stored in the MR's API shape."""
        data = mr.data
        count = len(mr.diffs)
        data["changes_count"] = f"{MAX_DIFF_FILES}+" if count > MAX_DIFF_FILES else str(count)
        data["user_notes_count"] = sum(
            1 for d in mr.discussions for n in d["notes"] if not n["system"]
        )
        data["diff_refs"] = {
            "base_sha": sha_for(f"base/{project.data['id']}/{data['target_branch']}"),
            "head_sha": data["sha"],
            "start_sha": sha_for(f"base/{project.data['id']}/{data['target_branch']}"),
        }
        data["merge_status"] = "cannot_be_merged" if data["has_conflicts"] else "can_be_merged"
        data["web_url"] = f"{self.url}/{project.data['path_with_namespace']}/-/merge_requests/"
        data["web_url"] += str(data["iid"])
        data["detailed_merge_status"] = self._detailed_merge_status(project, mr)

    def _touch(self, project: Project, mr: MergeRequest) -> None:
        mr.data["updated_at"] = iso(time.time())
        self._refresh(project, mr)

    def _detailed_merge_status(self, project: Project, mr: MergeRequest) -> str:
        """GitLab's merge checks in their order: not_open, draft_status, conflict,
        discussions_not_resolved, ci_must_pass, not_approved, status_checks_must_pass."""
        if mr.fixed_merge_status is not None:
            return mr.fixed_merge_status
        data = mr.data
        pipeline = data.get("head_pipeline") or {}
        if data["state"] != "opened":
            return "not_open"
        if data["draft"]:
            return "draft_status"
        if data["has_conflicts"]:
            return "conflict"
        if not data["blocking_discussions_resolved"] and project.data.get(
            "only_allow_merge_if_all_discussions_are_resolved"
        ):
            return "discussions_not_resolved"
        if project.data.get("only_allow_merge_if_pipeline_succeeds") and (
            pipeline.get("status") != "success"
        ):
            return "ci_must_pass"
        if len(mr.approved_by) < mr.approvals_required:
            return "not_approved"
        if project.data.get("only_allow_merge_if_all_status_checks_passed") and any(
            self._status_of(mr, c) != "passed" for c in self._applicable_checks(project, mr)
        ):
            return "status_checks_must_pass"
        return "mergeable"

    def _recompute_discussions(self, mr: MergeRequest) -> None:
        mr.data["blocking_discussions_resolved"] = all(
            n["resolved"] for d in mr.discussions for n in d["notes"] if n["resolvable"]
        )

    def _applicable_checks(self, project: Project, mr: MergeRequest) -> list[JSON]:
        """GitLab's `applicable_to_branch`: checks with no protected branch, or one whose name
        equals the MR's target branch (an exact SQL comparison: a wildcard protected branch such
        as ``release/*`` does not make its check apply to ``release/1.0``)."""
        target = mr.data["target_branch"]
        return [
            check
            for check in sorted(project.checks.values(), key=lambda c: c["id"])
            if not check["protected_branch_ids"]
            or any(
                project.protected_branches.get(b, {}).get("name") == target
                for b in check["protected_branch_ids"]
            )
        ]

    def _status_of(self, mr: MergeRequest, check: JSON) -> str:
        """ExternalStatusCheck#status: the newest response for the MR's head SHA, else pending.

        14.0-14.8: any response means "approved". 16.6+: a pending response (or none) older than
        `pending_timeout` reads as failed, as GitLab's timeout worker flips it (it creates the
        pending rows when the head changes, hence `head_since`)."""
        sha = mr.data["sha"]
        rows = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha]
        if self.legacy_status:
            return "approved" if rows else "pending"
        if rows:
            status = rows[-1].status
            since = rows[-1].retried_at or rows[-1].created_at
        else:
            status, since = "pending", mr.head_since
        if (
            status == "pending"
            and self.at_least(16, 6)
            and self.pending_timeout is not None
            and self.now() - since >= self.pending_timeout
        ):
            return "failed"
        return status

    def _render_check(self, project: Project, check: JSON) -> JSON:
        """The ExternalStatusCheck entity; `hmac` (whether a secret is set) from 17.3; the secret
        itself is never returned."""
        data = {
            "id": check["id"],
            "name": check["name"],
            "project_id": check["project_id"],
            "external_url": check["external_url"],
            "protected_branches": [
                {
                    "id": b,
                    "project_id": project.data["id"],
                    "name": project.protected_branches[b]["name"],
                    "created_at": project.data["created_at"],
                    "updated_at": project.data["created_at"],
                    "code_owner_approval_required": False,
                }
                for b in check["protected_branch_ids"]
                if b in project.protected_branches
            ],
        }
        if self.at_least(17, 3):
            data["hmac"] = bool(check.get("shared_secret"))
        return data

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

    # ================================================================ pagination

    def _paginate(
        self, ctx: Ctx, items: Sequence[Any], render: Callable[[Any], Any] | None = None
    ) -> web.Response:
        """GitLab's offset pagination: `page` (default 1) and `per_page` (default 20, max 100);
        headers x-page, x-per-page, x-next-page and x-prev-page (empty string when there is
        none), x-total and x-total-pages (omitted past 10,000 items), and Link with
        rel="prev"/"next"/"first"/"last" full URLs keeping the other query parameters.
        `render` turns the items of the page (only those) into their API shape, so listing a
        page costs what the page holds, as in GitLab, not what the whole list holds."""
        checked = Params(ctx.params)
        page = checked.integer("page")
        per_page = checked.integer("per_page")
        checked.check()
        page = page if page is not None and page >= 1 else 1
        if per_page is None or per_page < 1:
            per_page = DEFAULT_PER_PAGE
        per_page = min(per_page, MAX_PER_PAGE)
        total = len(items)
        total_pages = max(1, math.ceil(total / per_page))
        chunk = list(items[(page - 1) * per_page : page * per_page])
        if render is not None:
            chunk = [render(item) for item in chunk]
        out_of_range = page > total_pages
        has_next = not out_of_range and page < total_pages
        has_prev = not out_of_range and page > 1
        counted = total <= COUNT_LIMIT

        def link(number: int) -> str:
            pairs = [(k, v) for k, v in ctx.request.query.items() if k not in ("page", "per_page")]
            pairs += [("page", str(number)), ("per_page", str(per_page))]
            return str(ctx.request.url.with_query(pairs))

        links = []
        if has_prev:
            links.append(f'<{link(page - 1)}>; rel="prev"')
        next_url: str | None = link(page + 1) if has_next else None
        if self.next_link is not None:
            next_url = self.next_link(next_url, page)
        if next_url is not None:
            links.append(f'<{next_url}>; rel="next"')
        links.append(f'<{link(1)}>; rel="first"')
        if counted:
            links.append(f'<{link(total_pages)}>; rel="last"')
        next_page: str | None = str(page + 1) if has_next else ""
        if self.next_page_header is not None:
            next_page = self.next_page_header(next_page, page)
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Prev-Page": str(page - 1) if has_prev else "",
            "Link": ", ".join(links),
        }
        if next_page is not None:
            headers["X-Next-Page"] = next_page
        if counted:
            headers["X-Total"] = str(total)
            headers["X-Total-Pages"] = str(total_pages)
        return web.json_response(chunk, headers=headers)

    # ================================================================ routes

    def _build_routes(self) -> list[Route]:
        mr = "/projects/:id/merge_requests/:merge_request_iid"
        return [
            Route("GET", "/version", self._get_version),
            Route("GET", "/user", self._get_user),
            Route("GET", "/projects/:id", self._get_project),
            Route("PUT", "/projects/:id", self._put_project),
            Route("GET", "/projects/:id/merge_requests", self._list_mrs),
            Route("GET", mr, self._get_mr),
            Route("GET", f"{mr}/diffs", self._get_diffs, since=(15, 7)),
            Route("GET", f"{mr}/changes", self._get_changes),
            Route("GET", f"{mr}/approvals", self._get_approvals),
            Route("GET", f"{mr}/commits", self._get_commits),
            Route("GET", f"{mr}/discussions", self._get_discussions),
            Route("GET", f"{mr}/pipelines", self._get_pipelines),
            Route("GET", f"{mr}/notes", self._list_notes),
            Route("POST", f"{mr}/notes", self._post_note),
            Route("GET", f"{mr}/notes/:note_id", self._get_note),
            Route("PUT", f"{mr}/notes/:note_id", self._put_note),
            Route("DELETE", f"{mr}/notes/:note_id", self._delete_note),
            Route("GET", f"{mr}/status_checks", self._list_mr_status_checks),
            Route("POST", f"{mr}/status_check_responses", self._post_status_response),
            Route(
                "POST",
                f"{mr}/status_checks/:external_status_check_id/retry",
                self._retry_status_check,
                since=(15, 7),
            ),
            Route("GET", "/projects/:id/external_status_checks", self._list_checks),
            Route("POST", "/projects/:id/external_status_checks", self._post_check),
            Route("PUT", "/projects/:id/external_status_checks/:check_id", self._put_check),
            Route("DELETE", "/projects/:id/external_status_checks/:check_id", self._delete_check),
            Route("GET", "/projects/:id/protected_branches", self._list_protected_branches),
            Route("GET", "/projects/:id/hooks", self._list_hooks),
            Route("POST", "/projects/:id/hooks", self._post_hook),
            Route("GET", "/projects/:id/hooks/:hook_id", self._get_hook),
            Route("PUT", "/projects/:id/hooks/:hook_id", self._put_hook),
            Route("DELETE", "/projects/:id/hooks/:hook_id", self._delete_hook),
            Route("GET", "/groups/:id", self._get_group),
            Route("GET", "/groups/:id/members", self._list_group_members),
            Route("GET", "/groups/:id/members/all", self._list_all_group_members),
            Route("GET", "/groups/:id/projects", self._list_group_projects),
            Route("GET", "/groups/:id/descendant_groups", self._list_descendant_groups),
        ]

    # ---------------------------------------------------------------- instance

    def _get_version(self, ctx: Ctx) -> web.Response:
        """GET /version (authenticated): ``{"version": "18.9.0-ee", "revision": ...}``."""
        version = self.version if "-" in self.version else f"{self.version}-ee"
        return web.json_response({"version": version, "revision": "abc"})

    def _get_user(self, ctx: Ctx) -> web.Response:
        """GET /user: the token's user."""
        return web.json_response(_user(self.user, self.url) | {"bot": True})

    # ---------------------------------------------------------------- projects

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

    def _list_mrs(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/merge_requests: filters state (opened/closed/merged/locked/all,
        default all), iids[], source_branch, target_branch, labels (all of, comma-separated),
        updated_after; order_by created_at/updated_at, sort desc (default) or asc; paginated."""
        project = self._project(ctx)
        checked = Params(ctx.params)
        state = checked.text("state", values=["opened", "closed", "merged", "locked", "all"])
        iids = checked.integers("iids")
        order_by = checked.text("order_by", values=["created_at", "updated_at", "title"])
        sort = checked.text("sort", values=["asc", "desc"])
        checked.check()
        mrs = list(project.mrs.values())
        if state and state != "all":
            mrs = [m for m in mrs if m.data["state"] == state]
        if iids:
            mrs = [m for m in mrs if m.data["iid"] in iids]
        for key in ("source_branch", "target_branch"):
            if key in ctx.params:
                mrs = [m for m in mrs if m.data[key] == ctx.params[key]]
        if ctx.params.get("labels"):
            wanted = set(str(ctx.params["labels"]).split(","))
            mrs = [m for m in mrs if wanted <= set(m.data["labels"])]
        if ctx.params.get("updated_after"):
            mrs = [m for m in mrs if m.data["updated_at"] > str(ctx.params["updated_after"])]
        key = order_by or "created_at"
        mrs.sort(key=lambda m: (m.data[key], m.data["iid"]), reverse=(sort or "desc") == "desc")
        return self._paginate(ctx, mrs, lambda m: self._render_mr(project, m, basic=True))

    # ---------------------------------------------------------------- merge requests

    def _get_mr(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/merge_requests/:iid: the full MR entity (see `_render_mr`)."""
        project, mr = self._mr(ctx)
        return web.json_response(self._render_mr(project, mr))

    def _get_diffs(self, ctx: Ctx) -> web.Response:
        """GET .../diffs (15.7+; a 404 route before): the MR's file diffs, paginated like every
        list (default 20 per page, at most 100), with no file limit."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, mr.diffs)

    def _get_changes(self, ctx: Ctx) -> web.Response:
        """GET .../changes (all versions, deprecated in 15.7): the MR entity plus `changes` and
        `overflow`. Past 1000 files (diff_max_files) the list is cut and overflow is true, unless
        access_raw_diffs=true."""
        project, mr = self._mr(ctx)
        raw = Params(ctx.params).boolean("access_raw_diffs")
        data = self._render_mr(project, mr)
        overflow = not raw and len(mr.diffs) > MAX_DIFF_FILES
        data["changes"] = mr.diffs[:MAX_DIFF_FILES] if overflow else list(mr.diffs)
        data["overflow"] = overflow
        return web.json_response(data)

    def _get_approvals(self, ctx: Ctx) -> web.Response:
        """GET .../approvals: `approved_by: [{user}]`; approved when approvals_left is 0."""
        _, mr = self._mr(ctx)
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
            approved_by=[{"user": u} for u in mr.approved_by],
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

    def _get_commits(self, ctx: Ctx) -> web.Response:
        """GET .../commits: newest first, paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, mr.commits)

    def _get_discussions(self, ctx: Ctx) -> web.Response:
        """GET .../discussions: threads with their notes (resolvable/resolved), paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, mr.discussions)

    def _get_pipelines(self, ctx: Ctx) -> web.Response:
        """GET .../pipelines: the MR's pipelines, newest first, paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, [_pipeline_basic(p) for p in mr.pipelines])

    # ---------------------------------------------------------------- notes

    def _all_notes(self, mr: MergeRequest) -> list[JSON]:
        return [n for d in mr.discussions for n in d["notes"]]

    def _find_note(self, ctx: Ctx) -> tuple[Project, MergeRequest, JSON]:
        project, mr = self._mr(ctx)
        note_id = ctx.args["note_id"]
        for note in self._all_notes(mr):
            if str(note["id"]) == note_id:
                return project, mr, note
        raise not_found("Note")

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

    # ---------------------------------------------------------------- status checks

    def _licensed_project(self, ctx: Ctx) -> Project:
        """Status checks are Ultimate: once the project is found (404 first), an unlicensed one
        answers 401 on every status check endpoint."""
        project = self._project(ctx)
        if not self._has_ultimate(project):
            raise ApiError(401, {"message": "401 Unauthorized"})
        return project

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

    def _list_mr_status_checks(self, ctx: Ctx) -> web.Response:
        """GET .../status_checks: `[{id, name, external_url, status}]` for the checks applying
        to the MR's target branch, with the status for the MR's current head SHA (see
        `_status_of`). `external_url` is shown without its query string; paginated."""
        self._licensed_project(ctx)
        project, mr = self._mr(ctx)
        items = [
            {
                "id": check["id"],
                "name": check["name"],
                "external_url": check["external_url"].split("?", 1)[0],
                "status": self._status_of(mr, check),
            }
            for check in self._applicable_checks(project, mr)
        ]
        response = self._paginate(ctx, items)
        response.headers["Poll-Interval"] = "10000"
        return response

    def _post_status_response(self, ctx: Ctx) -> web.Response:
        """POST .../status_check_responses with external_status_check_id, sha, status.

        In GitLab's order: 401 unlicensed; 400 for parameters (`status` required from 15.0,
        passed/failed, plus pending from 16.5; on 14.0-14.8 it is not a parameter and any POST
        records an approval); 404 project/MR; 403 when the token's user cannot approve; 404
        "Not found" for a check not in the project (a check not applying to the target branch
        is accepted); 409 "SHA does not match HEAD of source branch: <head>" when `sha` is not
        the head. 201 with {id, merge_request, external_status_check}; each POST adds a row."""
        self._licensed_project(ctx)
        checked = Params(ctx.params)
        check_id = checked.integer("external_status_check_id", required=True)
        sha = checked.text("sha", required=True)
        status = "approved"
        if not self.legacy_status:
            values = (
                ["passed", "failed", "pending"] if self.at_least(16, 5) else ["passed", "failed"]
            )
            status = checked.text("status", required=True, values=values) or ""
        checked.check()
        project, mr = self._mr(ctx)
        if not self.can_approve:
            raise ApiError(403, {"message": "403 Forbidden"})
        check = project.checks.get(check_id or 0)
        if check is None:
            raise record_not_found()
        if sha != mr.data["sha"]:
            raise ApiError(
                409, {"message": f"SHA does not match HEAD of source branch: {mr.data['sha']}"}
            )
        row = self.set_status(project.data["id"], mr.data["iid"], check["id"], sha or "", status)
        self._touch(project, mr)
        body = {
            "id": row.id,
            "merge_request": self._render_mr(project, mr),
            "external_status_check": self._render_check(project, check),
        }
        return web.json_response(body, status=201)

    def _retry_status_check(self, ctx: Ctx) -> web.Response:
        """POST .../status_checks/:check_id/retry (15.7+): only a check that is failed for the
        head SHA (else 422 "External status check must be failed"); its newest response goes
        back to pending (GitLab re-sends the check request) and the answer is 202."""
        self._licensed_project(ctx)
        project, mr = self._mr(ctx)
        check_id = ctx.args["external_status_check_id"]
        check = project.checks.get(int(check_id)) if check_id.isdigit() else None
        if check is None:
            raise record_not_found()
        if self._status_of(mr, check) != "failed":
            raise ApiError(422, {"message": "External status check must be failed"})
        sha = mr.data["sha"]
        rows = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha]
        if rows:
            rows[-1].status = "pending"
            rows[-1].retried_at = self.now()
        else:  # failed by the 16.6+ timeout of an implicit pending
            row = self.set_status(project.data["id"], mr.data["iid"], check["id"], sha, "pending")
            row.retried_at = row.created_at
        self._touch(project, mr)
        return web.json_response({"message": "202 Accepted"}, status=202)

    def _list_checks(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/external_status_checks: every check of the project, paginated."""
        project = self._licensed_project(ctx)
        checks = sorted(project.checks.values(), key=lambda c: c["id"])
        return self._paginate(ctx, [self._render_check(project, c) for c in checks])

    def _check_params(
        self, ctx: Ctx, project: Project, *, creating: bool, current: JSON | None = None
    ) -> JSON:
        """Validate name/external_url/protected_branch_ids/shared_secret like GitLab: 400 for
        a missing required parameter; 422 ``{"message": [full messages]}`` for validation
        errors (name and external_url each unique per project, http(s) URL, branches of this
        project). `shared_secret` only exists from 17.3 (ignored before)."""
        checked = Params(ctx.params)
        name = checked.text("name", required=creating)
        url = checked.text("external_url", required=creating)
        branch_ids = checked.integers("protected_branch_ids")
        secret = checked.text("shared_secret") if self.at_least(17, 3) else None
        checked.check()
        updates: JSON = {}
        if name is not None:
            updates["name"] = name
        if url is not None:
            updates["external_url"] = url
        if branch_ids is not None:
            updates["protected_branch_ids"] = branch_ids
        if secret is not None:
            updates["shared_secret"] = secret
        merged = {**(current or {}), **updates}
        errors = []
        others = [c for c in project.checks.values() if current is None or c is not current]
        if not merged.get("name"):
            errors.append("Name can't be blank")
        elif any(c["name"] == merged["name"] for c in others):
            errors.append("Name has already been taken")
        if not re.match(r"^https?://[^\s/?#]+", merged.get("external_url") or ""):
            errors.append("External url is blocked: Only allowed schemes are http, https")
        elif any(c["external_url"] == merged["external_url"] for c in others):
            errors.append("External url has already been taken")
        if any(b not in project.protected_branches for b in merged.get("protected_branch_ids", [])):
            errors.append("all protected branches must exist within the project")
        if errors:
            raise ApiError(422, {"message": errors})
        return updates

    def _post_check(self, ctx: Ctx) -> web.Response:
        """POST /projects/:id/external_status_checks: 201 with the check."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        updates = self._check_params(ctx, project, creating=True)
        check = {
            "id": self._next_id(),
            "project_id": project.data["id"],
            "protected_branch_ids": [],
            "shared_secret": None,
            **updates,
        }
        project.checks[check["id"]] = check
        return web.json_response(self._render_check(project, check), status=201)

    def _put_check(self, ctx: Ctx) -> web.Response:
        """PUT /projects/:id/external_status_checks/:check_id: 200 with the check."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        check_id = ctx.args["check_id"]
        check = project.checks.get(int(check_id)) if check_id.isdigit() else None
        if check is None:
            raise record_not_found()
        check.update(self._check_params(ctx, project, creating=False, current=check))
        return web.json_response(self._render_check(project, check))

    def _delete_check(self, ctx: Ctx) -> web.Response:
        """DELETE /projects/:id/external_status_checks/:check_id: 204."""
        project = self._licensed_project(ctx)
        self._require_maintainer(project, status_check=True)
        check_id = ctx.args["check_id"]
        if not check_id.isdigit() or int(check_id) not in project.checks:
            raise record_not_found()
        del project.checks[int(check_id)]
        return web.Response(status=204)

    def _list_protected_branches(self, ctx: Ctx) -> web.Response:
        """GET /projects/:id/protected_branches: [{id, name, ...}], paginated."""
        project = self._project(ctx)
        branches = sorted(project.protected_branches.values(), key=lambda b: b["id"])
        return self._paginate(ctx, branches)

    # ---------------------------------------------------------------- hooks

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

    # ---------------------------------------------------------------- groups

    def _get_group(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id (numeric id or URL-encoded full path)."""
        return web.json_response(self._render_group(self._group(ctx)))

    def _list_group_members(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/members: direct members only, paginated."""
        return self._paginate(ctx, self._group(ctx).members)

    def _list_all_group_members(self, ctx: Ctx) -> web.Response:
        """GET /groups/:id/members/all: direct and inherited (ancestor groups) members, each
        user once with their highest access level, paginated."""
        group = self._group(ctx)
        best: dict[int, JSON] = {}
        for source in [group, *self._ancestors(group)]:
            for member in source.members:
                known = best.get(member["id"])
                if known is None or member["access_level"] > known["access_level"]:
                    best[member["id"]] = member
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


# --------------------------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------------------------

_DRAFT_PREFIX = re.compile(r"^\s*(\[draft\]|\(draft\)|draft:|draft\s+-|\[wip\]|wip:)\s*", re.I)


def _is_draft_title(title: str) -> bool:
    return bool(_DRAFT_PREFIX.match(title))


def _strip_draft(title: str) -> str:
    return _DRAFT_PREFIX.sub("", title)


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


def _pipeline_basic(pipeline: Mapping[str, Any]) -> JSON:
    return {
        k: pipeline[k]
        for k in (
            "id",
            "iid",
            "project_id",
            "sha",
            "ref",
            "status",
            "source",
            "created_at",
            "updated_at",
            "web_url",
        )
    }


async def _read_body(request: web.Request) -> tuple[bytes, Any, str | None]:
    """(raw body, decoded body, parse error). JSON and form bodies are decoded (form keys like
    ``ids[]`` become lists); a body without a known content type is not read as parameters,
    as in Rails."""
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        form = await request.post()
        return b"", {k: form.getall(k) if len(form.getall(k)) > 1 else form[k] for k in form}, None
    body = await request.read()
    if not body:
        return body, None, None
    if "json" in content_type:
        try:
            return body, json.loads(body), None
        except ValueError:
            return body, None, "The request body is not valid JSON"
    if content_type == "application/x-www-form-urlencoded":
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return body, _pairs_to_dict(pairs), None
    return body, None, None


def _pairs_to_dict(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        elif key.endswith("[]"):
            out[key] = [value]
        else:
            out[key] = value
    return out


def _query_dict(request: web.Request) -> dict[str, Any]:
    return _pairs_to_dict(request.query.items())


def _decode(response: web.Response) -> Any:
    body = response.body
    if not isinstance(body, bytes | bytearray):
        return None
    if response.content_type == "application/json":
        with contextlib.suppress(ValueError):
            return json.loads(body)
    return body.decode("utf-8", "replace")


async def _run_callback(callback: Callback, call: Call) -> None:
    result = callback(call)
    if inspect.isawaitable(result):
        await result


def _drop(request: web.Request) -> None:
    """Close the connection without an answer: the client sees a server disconnect."""
    if request.transport is not None:
        request.transport.close()


_HTML_ERRORS = {
    502: "Whoops, GitLab is taking too much time to respond.",
    503: "GitLab is not responding.",
    504: "Whoops, GitLab is taking too much time to respond.",
}


def _fault_response(status: int, retry_after: int | None, body: Any) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if isinstance(body, bytes):  # raw, e.g. b"" for the empty 422 some proxies send
        return web.Response(body=body, status=status, headers=headers)
    if body is not None:
        return web.json_response(body, status=status, headers=headers)
    if status == 429:
        return web.Response(
            status=429, text="Retry later\n", content_type="text/plain", headers=headers
        )
    if status in _HTML_ERRORS:
        page = (
            f"<!DOCTYPE html>\n<html><head><title>{status}</title></head><body>"
            f"<h1>{status}</h1><h3>{_HTML_ERRORS[status]}</h3></body></html>\n"
        )
        return web.Response(status=status, text=page, content_type="text/html", headers=headers)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return web.json_response({"message": f"{status} {reason}"}, status=status, headers=headers)


# --------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------


def seed(
    fake: FakeGitLab, mrs: int, checks: Sequence[str], bot_url: str, status: str | None = None
) -> None:
    """Project 1 "acme/app" with `mrs` open MRs (iids 1..N: a few files changed, a passing
    pipeline, one approval, two commits) and one status check per name; groups "acme" and
    "acme/security" with members. With `status`, every check of every MR already shows it for
    the MR's head (e.g. "passed", so a sweep finds nothing to repair)."""
    fake.add_group(10, "acme", [{"id": 1, "username": "alice"}, {"id": 2, "username": "bob"}])
    fake.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    fake.add_project(1, "acme/app", only_allow_merge_if_all_status_checks_passed=True)
    check_ids = []
    for name in checks:
        separator = "&" if "?" in bot_url else "?"
        check = fake.add_status_check(1, name, external_url=f"{bot_url}{separator}check={name}")
        check_ids.append(int(check["id"]))
    for iid in range(1, mrs + 1):
        sha = sha_for(f"seed/{iid}")
        fake.add_mr(
            1,
            iid,
            sha=sha,
            title=f"feat: change number {iid}",
            description=f"Implements change {iid}.",
            labels=["backend"] if iid % 2 else ["frontend", "hotfix"],
            author={"id": 1 + iid % 2, "username": "alice" if iid % 2 else "bob"},
            diffs=[
                diff_file(f"src/module_{iid % 7}/file_{n}.py", additions=5 * n, deletions=n)
                for n in range(1, 4)
            ],
            commits=[
                {"id": sha, "message": f"feat: change {iid}\n\nSigned-off-by: Alice <a@x>"},
                {"id": sha_for(f"seed/{iid}/parent"), "message": "chore: prepare"},
            ],
            approved_by=[{"id": 3, "username": "carol"}],
            pipeline="success",
        )
        if status is not None:
            for check_id in check_ids:
                fake.set_status(1, iid, check_id, sha, status)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGitLab(version=args.version, token=args.token)
    fake.latency = args.latency
    if args.fail_rate:
        fake.fail_randomly(args.fail_rate, seed=args.seed)
    url = await fake.start(args.host, args.port)
    checks = [c for c in args.checks.split(",") if c]
    seed(fake, args.seed_mrs, checks, args.bot_url, status=args.seed_status)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake GitLab standalone.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--version", default="18.9.0")
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--seed-mrs", type=int, default=0, help="open MRs in project 1 acme/app")
    parser.add_argument("--checks", default="", help="comma-separated status check names")
    parser.add_argument("--bot-url", default="http://127.0.0.1:8080/webhook")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="random 500/502/resets")
    parser.add_argument("--seed", type=int, default=0, help="seed for --fail-rate")
    parser.add_argument(
        "--seed-status", default=None, help="status every seeded MR's checks already show"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

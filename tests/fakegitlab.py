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
docs/architecture.md#gitlab-facts). Where real GitLab varies in ways the fake cannot know (a
feature flag, an instance setting), the fake picks the strictest plausible behaviour and says
so in a docstring.
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

JSON = dict[str, Any]
Callback = Callable[["Call"], Any]  # may return an awaitable

API_PREFIX = "/api/v4"
GRAPHQL_PATH = "/api/graphql"
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
COUNT_LIMIT = 10_000  # past this GitLab stops counting: no x-total, x-total-pages, rel="last"
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
# Approvals are deleted this long after a push in projects that reset them
# (ee/app/services/ee/merge_requests/refresh_service.rb:
# MergeRequestResetApprovalsWorker.perform_in(10.seconds, ...)).
APPROVAL_RESET_DELAY = 10.0
SEEDED_MR_AGE = 3600.0  # how long ago an MR added by add_mr was created (its first version)
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


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


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
    head_pipeline_id: int | None = None  # the stored column; see _update_head_pipeline
    responses: list[StatusResponse] = field(default_factory=list)  # oldest first
    head_since: float = 0.0  # when the current head SHA arrived (FakeGitLab.now())
    fixed_merge_status: str | None = None  # a detailed_merge_status the test pinned
    # Approval rows' created_at (wall clock, see FakeGitLab.wall) and patch_id_sha (the MR's
    # when they approved), by user id.
    approved_at: dict[int, float] = field(default_factory=dict)
    approval_patch: dict[int, str | None] = field(default_factory=dict)
    # The MR's diff versions (merge_request_diffs), oldest first; one per head GitLab recorded.
    versions: list[JSON] = field(default_factory=list)
    # Approval resets GitLab has scheduled but not run yet: (due on FakeGitLab.now(), head SHA).
    pending_resets: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Project:
    data: JSON
    namespace_path: str
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    # GET /projects/:id/approvals (ee/lib/api/entities/approval_settings.rb)
    approval_settings: JSON = field(
        default_factory=lambda: {
            "approvers": [],
            "approver_groups": [],
            "approvals_before_merge": 0,
            "reset_approvals_on_push": True,  # GitLab's default for a new project
            "selective_code_owner_removals": False,
            "disable_overriding_approvers_per_merge_request": False,
            "merge_requests_author_approval": False,
            "merge_requests_disable_committers_approval": False,
            "require_password_to_approve": False,
        }
    )
    # Commits the repository holds beyond the MRs' own (merge commits of merged-results
    # pipelines), by SHA: GET /projects/:id/repository/commits/:sha.
    commits: dict[str, JSON] = field(default_factory=dict)
    checks: dict[int, JSON] = field(default_factory=dict)  # includes the secret; never rendered
    protected_branches: dict[int, JSON] = field(default_factory=dict)
    hooks: dict[int, JSON] = field(default_factory=dict)  # includes the token; never rendered


@dataclass
class Group:
    data: JSON
    members: list[JSON] = field(default_factory=list)
    # Groups invited into this one ("share group with group"): (group id, max access level).
    shared_with_groups: list[tuple[int, int]] = field(default_factory=list)


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
        # RateLimit-* on every answer, as GitLab.com does (lib/gitlab/middleware/
        # rack_attack_headers.rb, behind the `rate_limiting_headers_for_unthrottled_requests`
        # feature flag). Off: only the 429 carries them, as on self-managed GitLab.
        self.rate_limit_headers_always = False
        # Hostile pagination (a proxy or a broken GitLab): each page's `rel="next"` URL and
        # X-Next-Page value pass through these; given the honest value (None/"" on the last
        # page) and the page number, they return what to send (None: leave it out).
        self.next_link: Callable[[str | None, int], str | None] | None = None
        self.next_page_header: Callable[[str, int], str | None] | None = None
        # Status check behaviour
        self.pending_timeout: float | None = 120.0  # 16.6+: a stored pending row fails after it
        self.legacy_status_checks: bool | None = None  # None: decided by version (< 15.0)
        # Seconds after a push when GitLab deletes approvals (a test may shorten it, with the
        # bot's APPROVAL_SETTLE_SECONDS shortened to match).
        self.approval_reset_delay = APPROVAL_RESET_DELAY
        # Record
        self.calls: list[Call] = []
        self.errors: list[BaseException] = []  # exceptions raised in handlers or callbacks
        self.in_flight = 0
        self.max_in_flight = 0
        # State
        self.projects: dict[int, Project] = {}
        self.groups: dict[int, Group] = {}
        self.extra_users: list[JSON] = []
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

    def wall(self) -> float:
        """The fake's wall clock (time.time() plus whatever `advance()` added): the timestamps
        it shows (approved_at, versions' created_at, pipelines) and its `Date` header."""
        return time.time() + self._time_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward, e.g. past the 16.6+ two-minute pending timeout or the
        10 s after a push when GitLab deletes approvals."""
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
        now = self.wall()
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
        self._add_version(mr)
        self._create_pending_rows(project, mr)
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

    def _create_pending_rows(self, project: Project, mr: MergeRequest) -> None:
        """A new MR gets a stored `pending` row for each of the project's checks, for its head
        at creation: ee/app/models/ee/merge_request.rb (after_create_commit
        :create_pending_status_check_responses, where status checks are licensed) runs
        ee/app/workers/compliance_management/pending_status_check_worker.rb, which creates one
        per check of the project (every check, whatever its branches). Nothing else creates one
        but Retry and a posted `pending`: a push does not. Such rows can only exist where
        `pending` is a status at all (16.5+, ee/app/models/merge_requests/status_check_response.rb
        `enum status: %w[passed failed pending]`)."""
        if self.legacy_status or not self.at_least(16, 5) or not self._has_ultimate(project):
            return
        sha = mr.data.get("sha")
        if not sha:  # `return unless diff_head_sha.present?`
            return
        for check_id in sorted(project.checks):
            mr.responses.append(
                StatusResponse(self._next_id(), check_id, sha, "pending", self.now())
            )

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
        if mr.versions:  # a test's shortcut: the current head's version shows this change
            stored, overflow = _stored_diffs(mr.diffs)
            mr.versions[-1].update(
                state="overflow" if overflow else "collected",
                real_size=f"{len(stored)}+" if overflow else str(len(stored)),
            )
        self._touch(project, mr)

    def push(
        self,
        project_id: int,
        iid: int,
        sha: str,
        *,
        message: str | None = None,
        pipeline: str | None = None,
        reset_approvals: bool | None = None,
        diffs: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """The source branch moves to `sha`, as GitLab records a push (MergeRequests::
        RefreshService → reload_diff → a new merge_request_diff, the MR's `sha`):

        - a new diff version (GET .../versions); with `diffs`, the change it shows;
        - status checks show `pending` for the new SHA: no response row is stored for it, so a
          check nobody answers stays pending for good (see `_status_of`);
        - `head_pipeline` keeps pointing at the old head's pipeline until one exists for the new
          head (app/models/merge_request.rb: `update_head_pipeline` only ever sets it to a
          pipeline matching `diff_head_sha`; the push never clears it). `pipeline` creates one
          for the new head at once;
        - where the project resets approvals on push (GET /projects/:id/approvals,
          `reset_approvals_on_push`, on by default; `reset_approvals` overrides it for this
          push), the approvals are deleted APPROVAL_RESET_DELAY (10 s) later on the fake's clock,
          with no webhook (MergeRequestResetApprovalsWorker.perform_in(10.seconds));
        - with `message`, a commit is added on top."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        mr.data["sha"] = sha
        mr.head_since = self.now()
        if message is not None:
            mr.commits.insert(0, _commit({"id": sha, "message": message}, self.url, project))
        if diffs is not None:
            mr.diffs = [_diff_entry(f) for f in diffs]
        self._add_version(mr)
        resets = project.approval_settings["reset_approvals_on_push"]
        if reset_approvals if reset_approvals is not None else resets:
            mr.pending_resets.append((self.now() + self.approval_reset_delay, sha))
        if pipeline is not None:
            self.set_pipeline(project_id, iid, pipeline)
        self._touch(project, mr)

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

    def set_pipeline(self, project_id: int, iid: int, status: str | None, **fields: Any) -> None:
        """Create or update a pipeline and let GitLab pick the head pipeline.

        `status` None removes the head pipeline (a test's shortcut for "no pipeline ever ran").
        Otherwise the pipeline for `sha` (default: the current head) is updated in place, or a new
        one is created (listed first in /pipelines). With `merged_results=True` it is a
        merged-results pipeline (ee/app/services/ee/merge_requests/create_pipeline_service.rb):
        it runs on `refs/merge-requests/:iid/merge`, its `sha` is a merge commit of the target
        branch and `sha` (parent_ids [target, source]), and it remembers `source_sha` — which the
        API never shows (lib/api/entities/ci/pipeline_basic.rb exposes id, iid, project_id, sha,
        ref, status, source, created_at, updated_at, web_url). `merge_train=True` likewise on
        `refs/merge-requests/:iid/train`. Then `update_head_pipeline` runs."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if status is None:
            mr.head_pipeline_id = None
            self._touch(project, mr)
            return
        source_sha = fields.get("sha", mr.data["sha"])
        kind = (
            "train"
            if fields.get("merge_train")
            else "merge"
            if fields.get("merged_results")
            else ""
        )
        now = iso(self.wall())
        pipeline = next(
            (
                p
                for p in mr.pipelines
                if p["_source_sha"] == source_sha and p["_kind"] == kind and "id" not in fields
            ),
            None,
        )
        if pipeline is None:
            pid = self._next_id(fields.get("id"))
            path = project.data["path_with_namespace"]
            sha, target_sha = source_sha, None
            ref = fields.get("ref", f"refs/merge-requests/{iid}/head")
            if kind:
                target_sha = sha_for(f"target/{project_id}/{mr.data['target_branch']}/{pid}")
                sha = sha_for(f"merge/{source_sha}/{target_sha}")
                ref = f"refs/merge-requests/{iid}/{kind}"
                project.commits[sha] = _commit(
                    {
                        "id": sha,
                        "message": f"Merge branch '{mr.data['source_branch']}' into "
                        f"'{mr.data['target_branch']}'",
                        "parent_ids": [target_sha, source_sha],
                    },
                    self.url,
                    project,
                )
            pipeline = {
                "id": pid,
                "iid": len(mr.pipelines) + 1,
                "project_id": project_id,
                "sha": sha,
                "ref": ref,
                "status": status,
                "source": fields.get("source", "merge_request_event"),
                "created_at": now,
                "updated_at": now,
                "web_url": f"{self.url}/{path}/-/pipelines/{pid}",
                "_source_sha": source_sha,
                "_target_sha": target_sha,
                "_kind": kind,
            }
            mr.pipelines.insert(0, pipeline)
        pipeline.update(status=status, updated_at=now)
        self._update_head_pipeline(mr)
        self._touch(project, mr)

    def _update_head_pipeline(self, mr: MergeRequest) -> None:
        """app/models/merge_request.rb `update_head_pipeline`: the newest pipeline whose `sha` or
        `source_sha` is the head (`for_sha_or_source_sha(diff_head_sha)`, merge-request
        pipelines first: Ci::PipelinesForMergeRequestFinder), and only if there is one: a push
        leaves the old pipeline in place until a pipeline for the new head exists."""
        head = mr.data["sha"]
        matching = [p for p in mr.pipelines if head in (p["sha"], p["_source_sha"])]
        if matching:
            matching.sort(key=lambda p: (p["source"] != "merge_request_event", -p["id"]))
            mr.head_pipeline_id = matching[0]["id"]

    def _head_pipeline(self, mr: MergeRequest) -> JSON | None:
        return next((p for p in mr.pipelines if p["id"] == mr.head_pipeline_id), None)

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

    def clear_watchers(self, method: str = "*", path_contains: str = "") -> None:
        """Remove the `on_request` callbacks registered with this method and path."""
        self._watchers = [
            w
            for w in self._watchers
            if not (method in ("*", w.method) and w.path_contains == path_contains)
        ]

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
            # The fake's own clock, so a test that advance()s time moves GitLab's `Date` too.
            response.headers["Date"] = formatdate(self.wall(), usegmt=True)
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
            if self.rate_limit_headers_always:
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
        """Rack::Attack's throttle answer: 429, text "Retry later", Retry-After, RateLimit-*.

        lib/gitlab/rack_attack.rb: the `throttled_responder` adds `throttled_response_headers`
        (RateLimit-Name/-Limit/-Observed/-Remaining/-Reset/-ResetTime and Retry-After) to the 429
        only; an answer that is not throttled carries none unless `rate_limit_headers_always`."""
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
        if raw.rstrip("/") == GRAPHQL_PATH:
            if request.method != "POST":
                raise ApiError(405, {"error": "405 Not Allowed"})
            call.route = f"POST {GRAPHQL_PATH}"
            return web.json_response(self._graphql(call.json))
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
        # lib/api/entities/merge_request.rb: `expose :head_pipeline` is the stored association
        # (which lags a push, see `push`), never `diff_head_pipeline`.
        head = self._head_pipeline(mr)
        data["head_pipeline"] = _pipeline_full(head) if head else None
        data["pipeline"] = _pipeline_basic(head) if head else None
        if basic:
            for key in ("pipeline", "head_pipeline", "diff_refs", "changes_count", "user"):
                data.pop(key, None)
            data.pop("merge_error", None)
            data.pop("subscribed", None)
        return data

    def _refresh(self, project: Project, mr: MergeRequest) -> None:
        """Recompute the derived fields stored in the MR's API shape."""
        data = mr.data
        # lib/api/entities/merge_request.rb: changes_count is merge_request_diff.real_size, the
        # stored file count with a "+" when the diff was cut (Gitlab::Git::DiffCollection).
        stored, overflow = _stored_diffs(mr.diffs)
        data["changes_count"] = f"{len(stored)}+" if overflow else str(len(stored))
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
        mr.data["updated_at"] = iso(self.wall())
        self._refresh(project, mr)

    def _detailed_merge_status(self, project: Project, mr: MergeRequest) -> str:
        """GitLab's merge checks in their order: not_open, draft_status, conflict,
        discussions_not_resolved, ci_must_pass, not_approved, status_checks_must_pass."""
        if mr.fixed_merge_status is not None:
            return mr.fixed_merge_status
        data = mr.data
        # The merge check uses diff_head_pipeline: the head pipeline only if it is for the head.
        head = self._head_pipeline(mr) or {}
        pipeline = head if data["sha"] in (head.get("sha"), head.get("_source_sha")) else {}
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
        """ExternalStatusCheck#status (ee/app/models/merge_requests/external_status_check.rb):
        the newest stored row for the MR's head SHA, else 'pending' (no row: nothing times out).

        14.0-14.8: any response means "approved". 16.6+: a stored `pending` row reads as failed
        once it is older than `pending_timeout`, as
        ee/app/workers/compliance_management/timeout_pending_status_check_responses_worker.rb
        (cron, every minute) flips `StatusCheckResponse.pending.timeout_eligible` rows:
        retried_at IS NULL AND created_at < 2 minutes ago, OR retried_at < 2 minutes ago
        (ee/app/models/merge_requests/status_check_response.rb). Only stored rows: the pending
        shown for a head nobody answered (e.g. after a push) stays pending for good."""
        sha = mr.data["sha"]
        rows = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha]
        if self.legacy_status:
            return "approved" if rows else "pending"
        if not rows:
            return "pending"
        row = rows[-1]
        if (
            row.status == "pending"
            and self.at_least(16, 6)
            and self.pending_timeout is not None
            and self.now() - (row.retried_at if row.retried_at is not None else row.created_at)
            >= self.pending_timeout
        ):
            return "failed"
        return row.status

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
            Route("GET", "/users", self._list_users),
            Route("GET", "/projects/:id", self._get_project),
            Route("PUT", "/projects/:id", self._put_project),
            Route("GET", "/projects/:id/merge_requests", self._list_mrs),
            Route("GET", mr, self._get_mr),
            Route("GET", f"{mr}/diffs", self._get_diffs, since=(15, 7)),
            Route("GET", f"{mr}/changes", self._get_changes),
            Route("GET", f"{mr}/approvals", self._get_approvals),
            Route("GET", f"{mr}/versions", self._get_versions),
            Route("GET", "/projects/:id/approvals", self._get_project_approvals),
            Route("GET", "/projects/:id/repository/commits/:sha", self._get_repository_commit),
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
        self._apply_resets(mr)
        return web.json_response(self._render_mr(project, mr))

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
        """POST .../status_checks/:check_id/retry (15.7+): only a check whose newest stored row
        for the head SHA is failed (else 422 "External status check must be failed", also for a
        pending nobody stored, e.g. after a push); that row goes back to pending with
        retried_at set (GitLab re-sends the check request) and the answer is 202, as
        ee/app/services/external_status_checks/retry_service.rb does."""
        self._licensed_project(ctx)
        project, mr = self._mr(ctx)
        check_id = ctx.args["external_status_check_id"]
        check = project.checks.get(int(check_id)) if check_id.isdigit() else None
        if check is None:
            raise record_not_found()
        if self._status_of(mr, check) != "failed":
            raise ApiError(422, {"message": "External status check must be failed"})
        sha = mr.data["sha"]
        last = [r for r in mr.responses if r.check_id == check["id"] and r.sha == sha][-1]
        last.status = "pending"
        last.retried_at = self.now()
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

    # ---------------------------------------------------------------- GraphQL

    def _graphql(self, body: Any) -> JSON:
        """POST /api/graphql, for the fields the bot asks: `project(fullPath:)
        { mergeRequest(iid:) { ... } }` with `diffRefs { baseSha headSha startSha }`,
        `diffHeadSha`, `diffStats { path additions deletions }` and `diffStatsSummary
        { additions deletions changes fileCount }` (app/graphql/types/merge_request_type.rb).

        diffStats come from Gitaly (`repository.diff_stats(base, head)`: git diff --numstat)
        for the whole change: no diff limits, no pagination, the NEW path of a rename only
        (app/graphql/types/diff_stats_type.rb). diffStatsSummary's fileCount is the stored
        file count when the MR's metrics have line counts, so it is capped like changes_count
        (app/graphql/batch_loaders/merge_request_diff_summary_batch_loader.rb). Errors are
        answered as graphql-ruby does: HTTP 200 with `errors`."""
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return {"errors": [{"message": "No query string was present"}]}
        variables = body.get("variables") or {}
        try:
            tree = _parse_selection(body["query"])
        except ValueError as error:
            return {"errors": [{"message": f"Parse error: {error}"}]}
        project_node = tree.get("project")
        if project_node is None or set(tree) - {"project"}:
            unknown = sorted(set(tree) - {"project"}) or ["(none)"]
            return {"errors": [{"message": f"Field '{unknown[0]}' doesn't exist on type 'Query'"}]}
        full_path = _graphql_arg(project_node, "fullPath", variables)
        project = next(
            (
                p
                for p in self.projects.values()
                if p.data["path_with_namespace"].lower() == str(full_path).lower()
            ),
            None,
        )
        mr_node = project_node["fields"].get("mergeRequest")
        if mr_node is None:
            return {"errors": [{"message": "Field 'project' must have a selection"}]}
        if project is None:
            return {"data": {"project": None}}
        iid = _graphql_arg(mr_node, "iid", variables)
        mr = project.mrs.get(int(iid)) if str(iid).isdigit() else None
        if mr is None:
            return {"data": {"project": {"mergeRequest": None}}}
        stored, _ = _stored_diffs(mr.diffs)
        stats = [
            {
                "path": e["new_path"],
                "additions": _line_count_of(e, "+"),
                "deletions": _line_count_of(e, "-"),
            }
            for e in mr.diffs
        ]
        refs = mr.data.get("diff_refs") or {}
        values: dict[str, Any] = {
            "diffHeadSha": mr.data["sha"],
            "diffRefs": {
                "baseSha": refs.get("base_sha"),
                "headSha": refs.get("head_sha"),
                "startSha": refs.get("start_sha"),
            },
            "diffStats": stats,
            "diffStatsSummary": {
                "additions": sum(x["additions"] for x in stats),
                "deletions": sum(x["deletions"] for x in stats),
                "changes": sum(x["additions"] + x["deletions"] for x in stats),
                "fileCount": len(stored),
            },
        }
        out: JSON = {}
        for name, node in mr_node["fields"].items():
            if name not in values:
                return {
                    "errors": [{"message": f"Field '{name}' doesn't exist on type 'MergeRequest'"}]
                }
            value = values[name]
            wanted = set(node["fields"])
            if isinstance(value, list):
                out[name] = [{k: item.get(k) for k in wanted} for item in value]
            elif isinstance(value, dict):
                out[name] = {k: value.get(k) for k in wanted}
            else:
                out[name] = value
        return {"data": {"project": {"mergeRequest": out}}}

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


_GRAPHQL_TOKEN = re.compile(
    r'\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[{}():,!$\[\]])|(?P<string>"[^"]*")|(?P<number>-?\d+))'
)


def _parse_selection(query: str) -> dict[str, Any]:
    """A small GraphQL reader for the fake: the top selection set of a query as
    {field: {"args": {name: raw value}, "fields": {...}}}. Enough for the bot's queries."""
    tokens: list[str] = []
    position = 0
    text = query.strip()
    while position < len(text):
        match = _GRAPHQL_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"unexpected character at {position}")
        tokens.append(match.group().strip())
        position = match.end()
    tokens = [t for t in tokens if t and t != ","]
    # Skip `query Name($a: T!, ...)` up to the first `{`.
    start = tokens.index("{")

    def selection(index: int) -> tuple[dict[str, Any], int]:
        assert tokens[index] == "{"
        index += 1
        fields: dict[str, Any] = {}
        while tokens[index] != "}":
            name = tokens[index]
            index += 1
            args: dict[str, str] = {}
            if tokens[index] == "(":
                index += 1
                while tokens[index] != ")":
                    key = tokens[index]
                    value = (
                        tokens[index + 2] if tokens[index + 2] != "$" else "$" + tokens[index + 3]
                    )
                    args[key] = value
                    index += 3 if tokens[index + 2] != "$" else 4
                index += 1
            sub: dict[str, Any] = {}
            if index < len(tokens) and tokens[index] == "{":
                sub, index = selection(index)
            fields[name] = {"args": args, "fields": sub}
        return fields, index + 1

    try:
        tree, _ = selection(start)
    except (IndexError, AssertionError):
        raise ValueError("unbalanced selection set") from None
    return tree


def _graphql_arg(node: Mapping[str, Any], name: str, variables: Mapping[str, Any]) -> Any:
    raw = node["args"].get(name)
    if raw is None:
        return None
    if raw.startswith("$"):
        return variables.get(raw[1:])
    return raw.strip('"')


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


def _pipeline_full(pipeline: Mapping[str, Any]) -> JSON:
    """API::Entities::Ci::Pipeline (the MR's `head_pipeline`): the basic fields and a few more;
    never `source_sha`/`target_sha`, which GitLab keeps to itself."""
    return {
        **_pipeline_basic(pipeline),
        "before_sha": pipeline["sha"],
        "tag": False,
        "yaml_errors": None,
        "user": None,
        "started_at": pipeline["created_at"],
        "finished_at": None,
        "committed_at": None,
        "duration": None,
        "queued_duration": None,
        "coverage": None,
        "detailed_status": {"text": pipeline["status"], "group": pipeline["status"]},
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

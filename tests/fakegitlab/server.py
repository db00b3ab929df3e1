"""The fake GitLab's server: the call log, faults, watchers, pagination, routing and HTTP
plumbing, and the state every API area shares (projects, groups, the clock, the version).

Each API area is a mixin over `Server` (merge_requests.py, status_checks.py, ...) holding its
builder methods and route handlers; fake.py composes them into FakeGitLab.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import json
import math
import random
import re
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict

from tests.fakegitlab.state import JSON, Group, Project

Callback = Callable[["Call"], Any]  # may return an awaitable


API_PREFIX = "/api/v4"


GRAPHQL_PATH = "/api/graphql"


DEFAULT_PER_PAGE = 20


MAX_PER_PAGE = 100


COUNT_LIMIT = 10_000  # past this GitLab stops counting: no x-total, x-total-pages, rel="last"


UNKNOWN_ROUTE = {"error": "404 Not Found"}
# Where an MR's routes start, in GitLab's docs notation.
MR_ROUTE = "/projects/:id/merge_requests/:merge_request_iid"


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


class Server:
    """An in-memory GitLab behind a real HTTP server: its lifecycle, clock, call record, faults
    and HTTP plumbing. The API areas (mixins over this class) add state builders and routes;
    FakeGitLab (fake.py) composes them. See the package docstring."""

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
        # Status check behaviour: pending_timeout and legacy_status_checks (status_checks.py);
        # approvals: approval_reset_delay (approvals.py). Class attributes a test may override.
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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = [*re.findall(r"\d+", self.version), "0", "0"][:2]
        return int(major), int(minor)

    def at_least(self, major: int, minor: int = 0) -> bool:
        return self.version_tuple >= (major, minor)

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
        client timeout). As on GitLab, a request the client gave up on still runs to its end
        and is applied then: Puma does not stop a request when its client hangs up; only
        rack-timeout does, after GITLAB_RAILS_RACK_TIMEOUT (60 s by default; gitlab-foss
        MR 28405 "Added rack-timeout")."""
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

    def _build_routes(self) -> list[Route]:
        """Every route the fake answers (FakeGitLab adds those of each API area)."""
        return [Route("GET", "/version", self._get_version)]

    def _graphql(self, body: Any) -> JSON:
        """POST /api/graphql (graphql.py)."""
        raise NotImplementedError

    def _get_version(self, ctx: Ctx) -> web.Response:
        """GET /version (authenticated): ``{"version": "18.9.0-ee", "revision": ...}``."""
        version = self.version if "-" in self.version else f"{self.version}-ee"
        return web.json_response({"version": version, "revision": "abc"})


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

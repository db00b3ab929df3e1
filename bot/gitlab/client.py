"""The GitLab client: gidgetlab underneath, with timeouts, retries, version awareness, typed calls.

Everything the bot asks GitLab goes through `GitLab`, so timeouts, backoff, the concurrency limit
and the error sentences an operator can act on live in one place.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import gidgetlab.aiohttp
from gidgetlab import exceptions as gl_exc
from gidgetlab import sansio

from bot.gitlab import compat
from bot.gitlab.compat import ASSUMED_VERSION, Version
from bot.logs import get_logger

if TYPE_CHECKING:
    from bot.config import Settings

log = get_logger(__name__)

USER_AGENT = "gitlab-status-check-bot"
# python-gitlab retries 500/502/503/504 by default: a 500 on a read is as transient as a 502.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
VERSION_RETRY_MAX = 60.0  # seconds between two asks of an unknown version, at most
PROBE_SHA = "0" * 40  # never a head: a probe POST can only be refused (see reports_failures_probe)


class GitLabError(Exception):
    """A GitLab call failed. `status` is the HTTP status, or None when GitLab was unreachable."""

    def __init__(self, status: int | None, message: str, *, path: str = "") -> None:
        self.status = status
        self.message = message
        self.path = path
        super().__init__(f"{status or 'unreachable'}: {message} ({path})" if path else message)

    @property
    def transient(self) -> bool:
        """Worth trying again later: GitLab was down, slow, or rate-limiting us."""
        return self.status is None or self.status in RETRYABLE_STATUSES or self.status >= 500

    @property
    def head_moved(self) -> bool:
        """The 409 of status_check_responses: the SHA we judged is no longer the MR's head."""
        return self.status == 409 and "sha does not match head" in self.message.lower()

    def advice(self) -> str:
        """One sentence a platform engineer can act on."""
        if self.status == 401:
            return (
                "GitLab answered 401: the token is invalid or expired, or the project has no "
                "Ultimate licence (external status checks need Ultimate)"
            )
        if self.status == 403:
            return (
                "GitLab answered 403: the token's user lacks a role here; it needs at least "
                "Developer on the project (and must be allowed to approve the merge request)"
            )
        if self.status == 404:
            return (
                "GitLab answered 404: the project, merge request or status check does not exist, "
                "or the token's user cannot see it (add it as a member of the project)"
            )
        if self.status is None:
            return f"GitLab is unreachable: {self.message}"
        return f"GitLab answered {self.status}: {self.message}"


class RateLimitPacer:
    """Slows down before GitLab says 429: once few requests are left in the rate-limit window
    (`RateLimit-Remaining`), the rest are spread evenly until `RateLimit-Reset`."""

    def __init__(self, *, reserve_fraction: float = 0.1, min_reserve: int = 20) -> None:
        self.reserve_fraction = reserve_fraction
        self.min_reserve = min_reserve
        self.remaining: int | None = None
        self.limit: int | None = None
        self.reset_at: float | None = None
        self._next_slot = 0.0

    def observe(self, headers: Mapping[str, str]) -> None:
        try:
            remaining = headers.get("ratelimit-remaining") or headers.get("RateLimit-Remaining")
            if remaining is None:
                return
            self.remaining = int(remaining)
            limit = headers.get("ratelimit-limit") or headers.get("RateLimit-Limit")
            self.limit = int(limit) if limit else self.limit
            reset = headers.get("ratelimit-reset") or headers.get("RateLimit-Reset")
            self.reset_at = float(reset) if reset else self.reset_at
        except ValueError:
            return

    def delay(self, now: float | None = None) -> float:
        """Spacing between requests (0 while the window has room)."""
        if self.remaining is None or self.reset_at is None:
            return 0.0
        reserve = max(self.min_reserve, int((self.limit or 0) * self.reserve_fraction))
        if self.remaining > reserve:
            return 0.0
        window = self.reset_at - (time.time() if now is None else now)
        if window <= 0:
            return 0.0
        return min(MAX_PACING_DELAY, window / max(self.remaining, 1))

    async def wait(self) -> None:
        """Take the next free slot; concurrent callers queue up one spacing apart."""
        spacing = self.delay()
        if not spacing:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + spacing
        if slot > now:
            await asyncio.sleep(slot - now)


MAX_PACING_DELAY = 30.0


class ServerClock:
    """GitLab's own clock, from the `Date` header of its answers: a bot on a host whose clock is
    off must still tell when GitLab recorded a push relative to GitLab's now (timestamps in
    answers are GitLab's). One-second resolution, which the settling windows allow for."""

    def __init__(self) -> None:
        self.offset = 0.0  # GitLab's time minus ours, in seconds
        self.known = False

    def observe(self, headers: Mapping[str, str]) -> None:
        date = headers.get("Date") or headers.get("date")
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        self.offset = server - time.time()
        self.known = True

    def now(self) -> float:
        """GitLab's current time as a Unix timestamp (ours until GitLab has answered)."""
        return time.time() + self.offset


class RequestBudget:
    """A request budget of our own: a token bucket without burst (requests start 1/rate
    apart on average), shared by every caller. Self-managed GitLab sends `RateLimit-*` only with
    the 429 itself (lib/gitlab/rack_attack.rb), so `RateLimitPacer` cannot slow down before the
    limit there; this can. The sweep paces itself with one too (its own, smaller budget)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("a request budget needs a rate above 0")
        self.rate = rate
        self._next_slot = 0.0

    def restart(self) -> None:
        """Forget the debt of earlier spending: the next request may start at once."""
        self._next_slot = time.monotonic()

    async def spend(self, requests: float = 1.0) -> None:
        """Wait for this caller's slot; `requests` more may start no sooner than the budget
        allows. Concurrent callers queue up, each slot reserved before anyone sleeps."""
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + requests / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)


class _HardenedAPI(gidgetlab.aiohttp.GitLabAPI):
    """gidgetlab's aiohttp client with a timeout, retries and a concurrency limit per request."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        token: str,
        timeout: float,
        concurrency: int,
        max_attempts: int,
        on_response: Callable[[str, str, int | None, Mapping[str, str]], None] | None,
        budget: RequestBudget | None = None,
    ) -> None:
        super().__init__(session, USER_AGENT, access_token=token, url=url)
        self._timeout = timeout
        self._limit = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._on_response = on_response
        self.pacer = RateLimitPacer()
        self.clock = ServerClock()
        self.budget = budget  # GITLAB_RATE_LIMIT: every attempt of every request spends from it
        # When GitLab last said "Retry-After": no retry of anything should come before this.
        self.retry_not_before = 0.0
        # Writes whose attempt timed out or lost its connection: GitLab may still apply them
        # later, after a newer write (see GitLab.post_status).
        self.abandoned_writes = 0

    def format_url(self, url: str, params: Mapping[str, Any]) -> str:
        """gidgetlab's URL building without its per-request `urljoin`/`urlparse`/`parse_qs` for
        the paths this client builds (`/projects/1/merge_requests/5`); anything else (GitLab's
        absolute `Link: rel=next` URLs, queries, dot segments, `//`) takes gidgetlab's way."""
        if (
            url.startswith("/")
            and "?" not in url
            and "#" not in url
            and "//" not in url
            and "/." not in url
            and ":" not in url
        ):
            base = self.api_url + url[1:]
            return f"{base}?{urlencode(params, doseq=True)}" if params else base
        return super().format_url(url, params)

    def _retryable(self, method: str, url: str) -> bool:
        # Reads and status responses can be repeated safely (the newest status row for a SHA wins).
        return method in ("GET", "HEAD", "PUT", "DELETE") or url.endswith("status_check_responses")

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        limit: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request, retried; with `limit`, at most that many bytes of the answer are read
        (see `_read_at_most`)."""
        attempt = 0
        while True:
            attempt += 1
            await self.pacer.wait()
            try:
                async with self._limit:
                    if self.budget is not None:
                        # Inside the concurrency limit, so requests that waited for a free slot
                        # there do not then start together; outside the timeout, which is
                        # GitLab's time to answer.
                        await self.budget.spend()
                    async with (
                        asyncio.timeout(self._timeout),
                        # gidgetlab passes b"" for "no body"; aiohttp would then schedule a task
                        # per request to write those zero bytes. None sends the same request
                        # without it.
                        self._session.request(method, url, headers=headers, data=body or None) as r,
                    ):
                        status = r.status
                        data = await (r.read() if limit is None else _read_at_most(r, limit))
                        resp_headers: Mapping[str, str] = r.headers
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if method != "GET":
                    self.abandoned_writes += 1
                if self._on_response:
                    self._on_response(method, url, None, {})
                reason = (
                    "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
                )
                if attempt >= self._max_attempts or not self._retryable(method, url):
                    raise GitLabError(None, reason, path=_path_of(url)) from None
                await asyncio.sleep(_backoff(attempt))
                continue
            self.pacer.observe(resp_headers)
            self.clock.observe(resp_headers)
            if self._on_response:
                self._on_response(method, url, status, resp_headers)
            retry_after = _retry_after(status, resp_headers)
            if retry_after is not None:
                self.retry_not_before = max(self.retry_not_before, time.monotonic() + retry_after)
            if (
                status in RETRYABLE_STATUSES
                and attempt < self._max_attempts
                and (self._retryable(method, url) or status == 429)
            ):
                await asyncio.sleep(retry_after if retry_after is not None else _backoff(attempt))
                continue
            if status == 422 and not data:
                # gidgetlab expects a JSON body on 422 and raises AttributeError without one.
                data = b'{"message": "422 Unprocessable Entity"}'
                resp_headers = {**resp_headers, "content-type": "application/json"}
            elif status == 400:
                # Grape's parameter errors are {"error": "status is missing"}; gidgetlab only
                # reads "message", and the operator (and the version probe) want the reason.
                data, resp_headers = _error_as_message(data, resp_headers)
            return status, resp_headers, data


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of the answer; when there may be more, the connection is dropped
    rather than read to the end (a 30 MB file costs `limit` bytes, not 30 MB)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    response.close()
    return b"".join(chunks)


MAX_PAGES = 500  # 50,000 items at 100 a page: far past any MR's diffs, notes or a big group


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


class _Pages:
    """Every page of a GitLab list, read from GitLab only: the one adapter below gidgetlab's
    public calls (it sends through our `_HardenedAPI._request` and deciphers with gidgetlab's
    public `sansio`, so retries, timeouts and pacing apply to every page).

    The next page is built from `X-Next-Page` on GitLab's own base URL. Only without that header
    is `Link: rel="next"` used, and only when it has GitLab's scheme, host and port and stays
    under its API path: a proxy's `http://` link, or a hostile one, never gets the token. A next
    page that does not advance is a loop; more than `max_pages` pages is refused
    (`pagination_capped`). Both are errors rather than a short list: a list cut short could let
    a check pass on missing data (docs/architecture.md#never-a-false-pass)."""

    def __init__(self, api: _HardenedAPI, max_pages: int) -> None:
        self.api = api
        self.max_pages = max_pages

    def _refuse(self, path: str, message: str) -> GitLabError:
        # Status 200: GitLab answered, but the list cannot be read; not transient, not retried.
        return GitLabError(200, message, path=path)

    def _next_url(
        self,
        path: str,
        params: dict[str, Any],
        page: int,
        headers: Mapping[str, str],
        link: str | None,
    ) -> tuple[str, int] | None:
        next_page = headers.get("x-next-page")
        if next_page is not None:
            next_page = next_page.strip()
            if not next_page:
                return None
            if not next_page.isdigit() or int(next_page) <= page:
                raise self._refuse(
                    path, f"GitLab's X-Next-Page {next_page[:20]!r} does not advance past {page}"
                )
            number = int(next_page)
            return self.api.format_url(path, {**params, "page": number}), number
        if link is None:
            return None
        api = urlsplit(self.api.api_url)
        target = urlsplit(link)
        if _origin(link) != _origin(self.api.api_url) or not target.path.startswith(api.path):
            log.warning(
                "pagination_link_refused",
                path=path,
                link=f"{target.scheme}://{target.netloc}{target.path}"[:200],
                gitlab=f"{api.scheme}://{api.netloc}",
            )
            raise self._refuse(
                path,
                f"GitLab's next-page link points to {target.scheme}://{target.netloc[:100]}, "
                f"not to GITLAB_URL's {api.scheme}://{api.netloc}: not followed (the token "
                "goes to GITLAB_URL only); set GITLAB_URL to GitLab's external URL",
            )
        return link, page + 1

    async def all(
        self,
        path: str,
        params: dict[str, Any],
        until: Callable[[list[Any]], bool] | None = None,
    ) -> list[Any]:
        """Every item; with `until`, the items read so far once `until(page)` says that is
        enough (it is asked of each page but the last)."""
        url = self.api.format_url(path, params)
        seen = {url}
        items: list[Any] = []
        page = 1
        for _ in range(self.max_pages):
            headers = sansio.create_headers(self.api.requester, access_token=self.api.access_token)
            headers["content-length"] = "0"  # as gidgetlab's own GETs
            status, answer_headers, body = await self.api._request("GET", url, headers)
            data, _rate, link = sansio.decipher_response(status, answer_headers, body)
            if not isinstance(data, list):
                raise self._refuse(path, f"expected a list, got {type(data).__name__}")
            items.extend(data)
            following = self._next_url(path, params, page, answer_headers, link)
            if following is None or (until is not None and until(data)):
                return items
            url, page = following
            if url in seen:
                raise self._refuse(path, f"GitLab's next page does not advance (page {page})")
            seen.add(url)
        log.warning("pagination_capped", path=path, pages=self.max_pages, items=len(items))
        raise self._refuse(
            path, f"the list has more than {self.max_pages} pages; not read to the end"
        )


def _backoff(attempt: int) -> float:
    """Capped exponential backoff with full jitter, so many workers do not retry in step."""
    return random.uniform(0, min(8.0, 0.25 * 2**attempt))


def _retry_after(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds GitLab asked us to wait (`Retry-After` on a 429 or 503), capped at a minute."""
    if status not in (429, 503):
        return None
    try:
        return min(60.0, max(0.0, float(headers.get("retry-after", ""))))
    except ValueError:
        return None


def _error_as_message(data: bytes, headers: Mapping[str, str]) -> tuple[bytes, Mapping[str, str]]:
    if "json" not in (headers.get("content-type") or ""):
        return data, headers
    try:
        body = json.loads(data)
    except ValueError:
        return data, headers
    if isinstance(body, dict) and "message" not in body and isinstance(body.get("error"), str):
        return json.dumps({**body, "message": body["error"]}).encode(), headers
    return data, headers


def _path_of(url: str) -> str:
    path = url.split("/api/v4", 1)[-1]
    return path.split("?", 1)[0]


def project_ref(project: int | str) -> str:
    """A project id or `group/project` path as it goes into a URL."""
    return str(project) if isinstance(project, int) else quote(str(project), safe="")


class GitLab:
    """Typed calls the bot makes, version-aware (docs/architecture.md#gitlab-facts)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        token: str,
        timeout: float = 10.0,
        concurrency: int = 16,
        max_attempts: int = 4,
        on_response: Callable[[str, str, int | None, Mapping[str, str]], None] | None = None,
        rate_limit: float = 0.0,
        max_pages: int = MAX_PAGES,
    ) -> None:
        self.api = _HardenedAPI(
            session,
            url=url,
            token=token,
            timeout=timeout,
            concurrency=concurrency,
            max_attempts=max_attempts,
            on_response=on_response,
            budget=RequestBudget(rate_limit) if rate_limit > 0 else None,
        )
        self._pages = _Pages(self.api, max_pages)
        self.detected_version: Version | None = None
        # Whether GitLab can show a failed check (15.0+), as evaluations found out while the
        # version was unknown (see learn_reports_failures); the detected version wins.
        self.learned_reports_failures: bool | None = None
        self.learned_from = ""
        self.reachable: bool | None = None
        self.last_contact: float = 0.0
        self._version_failures = 0
        self._version_next_try = 0.0
        self._version_lock = asyncio.Lock()
        self._probe_next_try = 0.0
        self._probe_lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, session: aiohttp.ClientSession, settings: Settings, **overrides: Any
    ) -> GitLab:
        """The client as every command builds it: URL, token, timeout and concurrency from the
        settings; `overrides` for what one command needs differently."""
        options: dict[str, Any] = {
            "url": settings.gitlab_url,
            "token": settings.gitlab_token,
            "timeout": settings.gitlab_timeout,
            "concurrency": settings.gitlab_concurrency,
            "rate_limit": settings.gitlab_rate_limit,
        }
        return cls(session, **{**options, **overrides})

    @property
    def rate_limit(self) -> float:
        """Requests per second all calls may make together (GITLAB_RATE_LIMIT); 0: no limit."""
        return self.api.budget.rate if self.api.budget is not None else 0.0

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, coro: Any, path: str) -> Any:
        try:
            result = await coro
        except GitLabError as exc:
            self.reachable = exc.status is not None
            raise
        except gl_exc.HTTPException as exc:
            self.reachable = True
            message = str(exc) or exc.status_code.phrase
            raise GitLabError(int(exc.status_code), message, path=path) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise GitLabError(502, f"unreadable answer: {exc}", path=path) from None
        self.reachable = True
        self.last_contact = time.monotonic()
        return result

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self._call(self.api.getitem(path, params or {}), path)

    async def get_all(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        until: Callable[[list[Any]], bool] | None = None,
    ) -> list[Any]:
        """Every item of a paginated list, read from GitLab only (see `_Pages`); `until(page)`
        may stop before the last page."""
        params = {"per_page": 100, **(params or {})}
        params.pop("page", None)
        return await self._call(self._pages.all(path, params, until), path)

    async def post(self, path: str, data: Any) -> Any:
        return await self._call(self.api.post(path, data=data), path)

    async def graphql(self, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        """One GraphQL query (`/api/graphql`, same token); its `data`. GraphQL answers errors
        with HTTP 200 and an `errors` list: those become a GitLabError (422), not data."""
        url = self.api.api_url.rsplit("/v4", 1)[0] + "/graphql"
        answer = await self._call(
            self.api.post(url, data={"query": query, "variables": dict(variables)}), "/graphql"
        )
        errors = (answer or {}).get("errors") if isinstance(answer, dict) else None
        if errors or not isinstance(answer, dict):
            message = "; ".join(str(e.get("message", e)) for e in errors or [answer])[:300]
            raise GitLabError(422, f"GraphQL: {message}", path="/graphql")
        return dict(answer.get("data") or {})

    @property
    def server_clock(self) -> ServerClock:
        return self.api.clock

    async def put(self, path: str, data: Any) -> Any:
        return await self._call(self.api.put(path, data=data), path)

    # -- version ----------------------------------------------------------------------------

    async def detect_version(self) -> Version | None:
        """Ask GitLab its version; on failure keep assuming a current GitLab, say so, and set
        when to ask again: soon (1 s, doubling up to a minute), never before GitLab's
        `Retry-After`."""
        try:
            answer = await self.get("/version")
        except GitLabError as exc:
            version = None
            problem = {"error": exc.advice()}
        else:
            version = Version.parse(str((answer or {}).get("version", "")))
            problem = {"answer": str(answer)[:200]}
        if version is None:
            self._version_failures += 1
            delay = min(VERSION_RETRY_MAX, 2.0 ** (self._version_failures - 1))
            now = time.monotonic()
            self._version_next_try = max(now + delay, self.api.retry_not_before)
            log.warning(
                "gitlab_version_unknown",
                **problem,
                assumed=str(ASSUMED_VERSION),
                retry_in=round(self._version_next_try - now, 1),
            )
            return None
        self.detected_version = version
        self._version_failures = 0
        log.info("gitlab_version", version=str(version))
        return version

    def version_retry_in(self) -> float:
        """Seconds until the unknown version may be asked again (0: now); inf once known."""
        if self.detected_version is not None:
            return float("inf")
        return max(0.0, self._version_next_try - time.monotonic())

    async def refresh_version(self) -> None:
        """Ask the unknown version again if it is time; never two asks at once, and a caller
        never waits for another's ask."""
        if self.version_retry_in() > 0 or self._version_lock.locked():
            return
        async with self._version_lock:
            await self.detect_version()

    def learn_reports_failures(self, value: bool, evidence: str) -> None:
        """Record what an answer revealed about GitLab's version (the first finding stays)."""
        if self.learned_reports_failures is not None:
            return
        self.learned_reports_failures = value
        self.learned_from = evidence
        if self.detected_version is None:
            log.info("gitlab_reports_failures_inferred", reports_failures=value, evidence=evidence)

    @property
    def known_reports_failures(self) -> bool | None:
        """Whether GitLab can show a failed check: from its version, else from what answers
        revealed; None while neither tells (GitLab 14.x would read a failure as approval)."""
        if self.detected_version is not None:
            return compat.reports_failures(self.detected_version)
        return self.learned_reports_failures

    async def reports_failures_probe(self, project: int | str, iid: int, check_id: int) -> None:
        """Find out, without /version and without storing anything, whether GitLab takes
        `status`: POST a status response with no `status` for a SHA that is never the head.
        15.0+ requires `status` (ee/lib/api/status_checks.rb: `requires :status`, checked by
        Grape before the endpoint runs): 400 "status is missing". 14.x has no such parameter
        and refuses the SHA (`check_sha_param!`): 409. Neither stores a row. At most one probe
        at a time, and not again for a while when it told nothing."""
        if (
            self.known_reports_failures is not None
            or self._probe_lock.locked()
            or time.monotonic() < self._probe_next_try
        ):
            return
        async with self._probe_lock:
            data = {"external_status_check_id": check_id, "sha": PROBE_SHA}
            try:
                await self.post(f"{self._mr_path(project, iid)}/status_check_responses", data)
            except GitLabError as exc:
                if exc.status == 400 and "status" in exc.message.lower():
                    self.learn_reports_failures(True, "status_check_responses requires `status`")
                    return
                if exc.head_moved:
                    self.learn_reports_failures(False, "status_check_responses has no `status`")
                    return
                log.info("gitlab_version_probe_inconclusive", error=exc.advice())
            else:  # cannot happen on any GitLab: a row for a SHA that is no head
                log.warning("gitlab_version_probe_accepted", project=str(project), mr=iid)
            self._probe_next_try = time.monotonic() + max(
                VERSION_RETRY_MAX, self.api.retry_not_before - time.monotonic()
            )

    @property
    def version(self) -> Version:
        return self.detected_version or ASSUMED_VERSION

    @property
    def reports_failures(self) -> bool:
        """GitLab 15.0+ takes passed/failed; 14.x treats any response as approval. While
        neither the version nor an answer tells, a current GitLab is assumed (what `status` is
        posted with; decide.py defers failures meanwhile)."""
        known = self.known_reports_failures
        return True if known is None else known

    # -- merge requests ---------------------------------------------------------------------

    def _mr_path(self, project: int | str, iid: int) -> str:
        return f"/projects/{project_ref(project)}/merge_requests/{iid}"

    async def merge_request(self, project: int | str, iid: int) -> dict[str, Any]:
        return await self.get(self._mr_path(project, iid))

    async def changed_files(
        self, project: int | str, iid: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The MR's diff entries, and whether GitLab truncated them (only /changes can)."""
        if compat.has_diffs_endpoint(self.version):
            return await self.get_all(f"{self._mr_path(project, iid)}/diffs"), False
        answer = await self.get(f"{self._mr_path(project, iid)}/changes")
        return list(answer.get("changes") or []), bool(answer.get("overflow"))

    async def approvals(self, project: int | str, iid: int) -> list[dict[str, Any]]:
        """`approved_by` entries: `{user, approved_at}` (approved_at only on recent GitLab)."""
        answer = await self.get(f"{self._mr_path(project, iid)}/approvals")
        return [e for e in (answer or {}).get("approved_by") or [] if isinstance(e, dict)]

    async def approval_settings(self, project: int | str) -> dict[str, Any]:
        """The project's approval settings (`reset_approvals_on_push`...; Premium and up)."""
        return await self.get(f"/projects/{project_ref(project)}/approvals")

    async def newest_version(self, project: int | str, iid: int) -> dict[str, Any] | None:
        """The MR's newest diff version: the head GitLab recorded last, and when."""
        answer = await self.get(f"{self._mr_path(project, iid)}/versions", {"per_page": 1})
        return answer[0] if isinstance(answer, list) and answer else None

    async def commit(self, project: int | str, sha: str) -> dict[str, Any]:
        return await self.get(f"/projects/{project_ref(project)}/repository/commits/{sha}")

    async def commits(self, project: int | str, iid: int) -> list[dict[str, Any]]:
        return await self.get_all(f"{self._mr_path(project, iid)}/commits")

    async def discussions(self, project: int | str, iid: int) -> list[dict[str, Any]]:
        return await self.get_all(f"{self._mr_path(project, iid)}/discussions")

    async def all_group_members(self, group: str | int) -> list[dict[str, Any]]:
        """members/all: direct members plus those inherited from ancestor groups and from groups
        shared into the group (broad: every member of `acme` is listed for `acme/security`)."""
        return await self.get_all(f"/groups/{project_ref(group)}/members/all")

    async def direct_group_members(self, group: str | int) -> list[dict[str, Any]]:
        """A group's own members."""
        return await self.get_all(f"/groups/{project_ref(group)}/members")

    async def descendant_groups(self, group: str | int) -> list[dict[str, Any]]:
        """Every group below `group`, at any depth."""
        return await self.get_all(f"/groups/{project_ref(group)}/descendant_groups")

    async def open_merge_requests(self, project: int | str) -> list[dict[str, Any]]:
        return await self.get_all(
            f"/projects/{project_ref(project)}/merge_requests", {"state": "opened"}
        )

    async def merge_requests_for_branch(
        self, project: int | str, branch: str
    ) -> list[dict[str, Any]]:
        return await self.get_all(
            f"/projects/{project_ref(project)}/merge_requests",
            {"state": "opened", "source_branch": branch},
        )

    async def merge_requests_for_target(
        self, project: int | str, branch: str
    ) -> list[dict[str, Any]]:
        return await self.get_all(
            f"/projects/{project_ref(project)}/merge_requests",
            {"state": "opened", "target_branch": branch},
        )

    # -- the repository (policies kept in it: bot/service/repository.py) --------------------

    async def branch_head(self, project: int | str, branch: str) -> str:
        """The commit SHA `branch` points at (GET .../repository/branches/:branch, `commit.id`;
        the name is one URL-encoded path segment)."""
        answer = await self.get(
            f"/projects/{project_ref(project)}/repository/branches/{quote(branch, safe='')}"
        )
        sha = (answer or {}).get("commit", {}).get("id") if isinstance(answer, dict) else None
        if not isinstance(sha, str) or not sha:
            raise GitLabError(502, "the branch answer names no commit", path="/branches")
        return sha

    async def tree(
        self,
        project: int | str,
        path: str,
        ref: str,
        *,
        until: Callable[[list[Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Every entry under `path` at `ref`, recursively (GET .../repository/tree, paginated;
        `until(page)` may stop earlier). GitLab answers 404 for a folder that is not there
        (recent versions) or `[]` (older)."""
        return await self.get_all(
            f"/projects/{project_ref(project)}/repository/tree",
            {"path": path, "ref": ref, "recursive": "true"},
            until=until,
        )

    async def raw_file(
        self, project: int | str, path: str, ref: str, *, limit: int | None = None
    ) -> bytes:
        """A file's bytes at `ref` (GET .../repository/files/:file_path/raw, the path one
        URL-encoded segment). With `limit`, at most `limit` bytes are read (then the
        connection is dropped): a caller that asks for one byte more than it takes learns
        that a file is too large without holding it."""
        where = f"/projects/{project_ref(project)}/repository/files/{quote(path, safe='')}/raw"

        async def read() -> bytes:
            url = self.api.format_url(where, {"ref": ref})
            headers = sansio.create_headers(self.api.requester, access_token=self.api.access_token)
            headers["content-length"] = "0"  # as gidgetlab's own GETs
            status, answer_headers, body = await self.api._request("GET", url, headers, limit=limit)
            if status != 200:
                sansio.decipher_response(status, answer_headers, body)  # raises GitLab's error
            # The file's bytes as they are, whatever GitLab's Content-Type says: gidgetlab would
            # decode `text/plain` as UTF-8 (failing on a Latin-1 file, which is the file's
            # problem, reported by the loader at file:line) and parse a `.json` file.
            return body

        return await self._call(read(), where)

    # -- status checks ----------------------------------------------------------------------

    async def status_checks(self, project: int | str, iid: int) -> list[dict[str, Any]]:
        return await self.get_all(f"{self._mr_path(project, iid)}/status_checks")

    async def post_status(
        self, project: int | str, iid: int, check_id: int, sha: str, status: str
    ) -> bool:
        """Post a verdict; True when some write (this one, or one made meanwhile) had an
        attempt given up on: GitLab may still apply it later, over a newer verdict, so the
        caller should look at GitLab's list again once such a request must have ended."""
        data: dict[str, Any] = {"external_status_check_id": check_id, "sha": sha}
        if self.reports_failures:
            data["status"] = status
        abandoned = self.api.abandoned_writes
        await self.post(f"{self._mr_path(project, iid)}/status_check_responses", data)
        return self.api.abandoned_writes > abandoned

    # -- notes (the sticky MR note, bot/sticky.py) ------------------------------------------

    async def current_user(self) -> dict[str, Any]:
        """The token's user (whose notes are the bot's own)."""
        return await self.get("/user")

    async def list_notes(self, project: int | str, iid: int) -> list[dict[str, Any]]:
        """Every note of the MR, oldest first (system notes included; GitLab paginates)."""
        return await self.get_all(f"{self._mr_path(project, iid)}/notes", {"sort": "asc"})

    async def create_note(self, project: int | str, iid: int, body: str) -> dict[str, Any]:
        # Not retried (a POST): a note created by an attempt that timed out is found next time.
        return await self.post(f"{self._mr_path(project, iid)}/notes", {"body": body})

    async def update_note(
        self, project: int | str, iid: int, note_id: int, body: str
    ) -> dict[str, Any]:
        return await self.put(f"{self._mr_path(project, iid)}/notes/{note_id}", {"body": body})

    # -- project set-up (register) ----------------------------------------------------------

    async def delete(self, path: str) -> None:
        await self._call(self.api.delete(path), path)

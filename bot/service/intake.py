"""POST /webhook: verify, read, parse, classify, de-duplicate, enqueue, answer.

The contract: docs/architecture.md#endpoints.

Every GitLab delivery lands on one URL: project, group and system webhooks (`X-Gitlab-Event`,
`X-Gitlab-Token`) and external status-check requests (no event header, `external_approval_rule` in
the body, maybe no Content-Type, maybe `X-Gitlab-Signature`). Each concern has its own gidgetlab
router; a callback only turns the payload into MR keys. Answers: 202 queued, 200 valid but
ignored (or a duplicate), 400 malformed, 401 bad token or signature, 405 not a POST, 413 too
large, 415 compressed (GitLab never compresses), 503 shutting down. No GitLab call is made here.
A refusal that leaves part of the body unread closes the connection instead of draining it.

The sender is not trusted: every field a router reads is type-checked and a wrong one is a 400
that names it; nothing from the payload is rendered recursively (a deeply nested value must not
raise RecursionError), and strings used only as hints are dropped when absurdly long. Whatever
still goes wrong while interpreting a body is answered 400 and logged as `delivery_unreadable`,
never as a 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal

import cachetools
from aiohttp import web
from gidgetlab import routing, sansio

from bot.keys import BranchKey, Hint, MRKey, PushKey
from bot.logs import get_logger

log = get_logger(__name__)

# Status-check requests carry no event header; we give them a name so a router can take them.
STATUS_CHECK_EVENT = "External Status Check"
CLOSING_ACTIONS = frozenset({"close", "merge"})
RECHECK_COMMAND = "/recheck"

MAX_ID = 2**63 - 1  # GitLab's ids are PostgreSQL bigints at most
MAX_HINT_CHARS = 1024  # longer branch names, paths or SHAs are not GitLab's: the hint is dropped
MAX_REF_CHARS = 1024  # a pipeline's ref becomes a key (an API query), so a longer one is a 400
LOGGED_HEADER_CHARS = 100
LOGGED_BODY_BYTES = 120
BODY_TIMEOUT = 30.0  # GitLab sends the whole body at once; a stalled one is a broken sender
DEDUPE_MAX_KEYS = 10_000
DEDUPE_TTL = 3600.0
# Bodies larger than this are parsed in a helper process: json.loads holds the GIL (a thread
# would not help), and a 10 MB body of many small keys takes ~0.7 s to parse. GitLab's own
# payloads can be that large (an MR description may have 1,048,576 characters, and a Merge
# Request Hook carries it up to three times), so a lower MAX_BODY_BYTES is no cure. Parsing
# 256 kB takes under 20 ms even in the worst shape; GitLab's usual deliveries are 2-30 kB.
LARGE_BODY_BYTES = 256 * 1024


class PayloadError(Exception):
    """The delivery is not what GitLab sends; the message says what is wrong (answered 400)."""


@dataclass
class Delivery:
    """What the routers made of one delivery."""

    kind: str
    work: list[tuple[MRKey | BranchKey, Hint]] = field(default_factory=list)
    ignored: str | None = None


class DeliveryMemory:
    """Delivery ids already accepted, so a delivery GitLab sends again is not queued again.

    Bounded whatever arrives: at most `max_keys` ids (the least recently added go first), each
    forgotten after `ttl` seconds, and stored as 16-byte digests so a long hostile header costs no
    more than a UUID.
    """

    def __init__(
        self,
        max_keys: int = DEDUPE_MAX_KEYS,
        ttl: float = DEDUPE_TTL,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen: cachetools.TTLCache[bytes, bool] = cachetools.TTLCache(
            maxsize=max_keys, ttl=ttl, timer=timer
        )

    @staticmethod
    def _digest(delivery_id: str) -> bytes:
        return hashlib.blake2b(
            delivery_id.encode("utf-8", "surrogateescape"), digest_size=16
        ).digest()

    def __contains__(self, delivery_id: object) -> bool:
        return isinstance(delivery_id, str) and self._digest(delivery_id) in self._seen

    def __len__(self) -> int:
        self._seen.expire()
        return len(self._seen)

    def remember(self, delivery_id: str) -> None:
        self._seen[self._digest(delivery_id)] = True


def delivery_id(headers: Mapping[str, str]) -> str | None:
    """The id that stays the same when GitLab sends a webhook again, if the delivery has one.

    `Idempotency-Key` (GitLab 17.4+) is kept across retries and resends; `X-Gitlab-Webhook-UUID`
    (16.2+) is new on every attempt, so on older GitLabs it only catches a replay of the very same
    request (e.g. by a proxy). `X-Gitlab-Event-UUID` is GitLab's recursion-detection id: new for
    each hook run (a retry gets a new one), but shared by every hook and event that an API call made
    from a webhook triggers, whatever the MR. It is no delivery id and never used here.
    """
    key = headers.get("Idempotency-Key")
    if key:
        return f"idempotency-key:{key}"
    uuid = headers.get("X-Gitlab-Webhook-UUID")
    if uuid:
        return f"webhook-uuid:{uuid}"
    return None


# -- payload access ---------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A short rendering of a payload value for an error message; never recursive."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        digits = len(str(abs(value)))
        return str(value) if digits <= 24 else f"a {digits}-digit number"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = json.dumps(value[:40]) + ("..." if len(value) > 40 else "")
        return f"the string {shown}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _mapping(data: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PayloadError(f"`{name}` must be an object, got {_describe(data)}")
    return data


def _optional_mapping(data: Mapping[str, Any], key: str, name: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    return None if value is None else _mapping(value, name)


def _positive_int(value: Any, name: str) -> int:
    # bool is an int in Python, and `true` is no id.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise PayloadError(f"`{name}` must be a positive integer id, got {_describe(value)}")
    return value


def _optional_str(data: Mapping[str, Any], key: str, name: str) -> str | None:
    """A string the bot only uses as a hint: absent, null or "" is None; so is an absurdly long
    one (a hint may be missing); any other type is a 400."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"`{name}` must be a string, got {_describe(value)}")
    return value if len(value) <= MAX_HINT_CHARS else None


def _project_id(data: Mapping[str, Any], attributes: Mapping[str, Any]) -> int:
    """The MR's (target) project: `target_project_id` when present, else the payload's project."""
    if attributes.get("target_project_id") is not None:
        return _positive_int(attributes["target_project_id"], "object_attributes.target_project_id")
    project = _mapping(data.get("project"), "project")
    return _positive_int(project.get("id"), "project.id")


def _project_path(data: Mapping[str, Any]) -> str | None:
    project = _optional_mapping(data, "project", "project")
    if project is None:
        return None
    return _optional_str(project, "path_with_namespace", "project.path_with_namespace")


def _merge_request_work(event: sansio.Event, delivery: Delivery) -> None:
    data = event.data
    attributes = _mapping(data.get("object_attributes"), "object_attributes")
    action = _optional_str(attributes, "action", "object_attributes.action")
    if action in CLOSING_ACTIONS:
        delivery.ignored = f"merge request {action}d: nothing to decide"
        return
    key = MRKey(
        _project_id(data, attributes), _positive_int(attributes.get("iid"), "object_attributes.iid")
    )
    last_commit = _optional_mapping(attributes, "last_commit", "object_attributes.last_commit")
    hint = Hint(
        trigger=f"{delivery.kind}:{action}" if action else delivery.kind,
        project_path=_project_path(data),
        target_branch=_optional_str(attributes, "target_branch", "object_attributes.target_branch"),
        source_branch=_optional_str(attributes, "source_branch", "object_attributes.source_branch"),
        sha=(
            _optional_str(last_commit, "id", "object_attributes.last_commit.id")
            if last_commit is not None
            else None
        ),
    )
    delivery.work.append((key, hint))


# -- routers, one per concern -----------------------------------------------------------------

merge_request_router = routing.Router()


@merge_request_router.register("Merge Request Hook")
async def merge_request_hook(event: sansio.Event, delivery: Delivery) -> None:
    """Every MR action but close/merge re-evaluates (pushes, labels, drafts, approvals...)."""
    _merge_request_work(event, delivery)


system_hook_router = routing.Router()


@system_hook_router.register("System Hook")
async def system_hook(event: sansio.Event, delivery: Delivery) -> None:
    """Instance system hooks: only their merge request events matter."""
    object_kind = _optional_str(event.data, "object_kind", "object_kind")
    if object_kind != "merge_request":
        shown = json.dumps(object_kind[:40]) if object_kind else "without object_kind"
        delivery.ignored = f"system hook event {shown} is not acted on"
        return
    _merge_request_work(event, delivery)


status_check_router = routing.Router()


@status_check_router.register(STATUS_CHECK_EVENT)
async def status_check_request(event: sansio.Event, delivery: Delivery) -> None:
    """GitLab asks for a verdict (on MR events, and on Retry, which sends no `action`)."""
    _merge_request_work(event, delivery)


pipeline_router = routing.Router()


@pipeline_router.register("Pipeline Hook")
async def pipeline_hook(event: sansio.Event, delivery: Delivery) -> None:
    """A pipeline changed: re-evaluate the MR whose head it may be (`pipeline:` rules)."""
    data = event.data
    attributes = _mapping(data.get("object_attributes"), "object_attributes")
    project_id = _positive_int(_mapping(data.get("project"), "project").get("id"), "project.id")
    status = _optional_str(attributes, "status", "object_attributes.status")
    hint = Hint(
        trigger=f"pipeline:{status}" if status else "pipeline", project_path=_project_path(data)
    )
    merge_request = _optional_mapping(data, "merge_request", "merge_request")
    if merge_request is not None and merge_request.get("iid") is not None:
        target = merge_request.get("target_project_id")
        key = MRKey(
            _positive_int(
                project_id if target is None else target, "merge_request.target_project_id"
            ),
            _positive_int(merge_request.get("iid"), "merge_request.iid"),
        )
        delivery.work.append((key, hint))
        return
    tag = attributes.get("tag")
    if tag is not None and not isinstance(tag, bool):
        raise PayloadError(f"`object_attributes.tag` must be true or false, got {_describe(tag)}")
    ref = attributes.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise PayloadError(f"`object_attributes.ref` must be a string, got {_describe(ref)}")
    if tag or not ref:
        delivery.ignored = "pipeline is not for a branch or merge request"
        return
    if len(ref) > MAX_REF_CHARS:
        raise PayloadError(f"`object_attributes.ref` is longer than {MAX_REF_CHARS} characters")
    delivery.work.append((BranchKey(project_id, ref), hint))


note_router = routing.Router()


def _is_recheck(note: str | None) -> bool:
    if note is None:
        return False
    first_line = note.strip().split("\n", 1)[0].strip()
    return first_line == RECHECK_COMMAND or first_line.startswith(RECHECK_COMMAND + " ")


@note_router.register("Note Hook")
@note_router.register("Confidential Note Hook")
async def note_hook(event: sansio.Event, delivery: Delivery) -> None:
    """`/recheck` re-evaluates, e.g. to re-run a passed check (Retry only re-runs failed ones).
    An internal note arrives as `Confidential Note Hook` (GitLab's confidential_note_hooks
    scope), with the same payload: it is handled the same way."""
    data = event.data
    attributes = _mapping(data.get("object_attributes"), "object_attributes")
    noteable_type = _optional_str(attributes, "noteable_type", "object_attributes.noteable_type")
    if noteable_type != "MergeRequest":
        delivery.ignored = "note is not on a merge request"
        return
    note = attributes.get("note")
    if note is not None and not isinstance(note, str):
        raise PayloadError(f"`object_attributes.note` must be a string, got {_describe(note)}")
    if not _is_recheck(note):
        delivery.ignored = "note is not a /recheck command"
        return
    merge_request = _mapping(data.get("merge_request"), "merge_request")
    project_id = merge_request.get("target_project_id")
    if project_id is None:
        project_id = _mapping(data.get("project"), "project").get("id")
    key = MRKey(
        _positive_int(project_id, "merge_request.target_project_id"),
        _positive_int(merge_request.get("iid"), "merge_request.iid"),
    )
    delivery.work.append((key, Hint(trigger="note:/recheck", project_path=_project_path(data))))


push_router = routing.Router()


@push_router.register("Push Hook")
async def push_hook(event: sansio.Event, delivery: Delivery) -> None:
    """A branch moved: repository policies kept there may have changed
    (docs/architecture.md#repository-policies). A tag or a deleted branch holds none."""
    data = event.data
    project_id = data.get("project_id")
    if project_id is None:
        project_id = _mapping(data.get("project"), "project").get("id")
    project_id = _positive_int(project_id, "project_id")
    ref = _optional_str(data, "ref", "ref")
    after = _optional_str(data, "after", "after")
    if not ref or not ref.startswith("refs/heads/") or (after and not after.strip("0")):
        delivery.ignored = "push is not to a branch (a tag, or a deleted branch)"
        return
    branch = ref.removeprefix("refs/heads/")
    if not branch or len(branch) > MAX_REF_CHARS:
        raise PayloadError(f"`ref` must name a branch of at most {MAX_REF_CHARS} characters")
    hint = Hint(trigger="push", project_path=_project_path(data), target_branch=branch)
    delivery.work.append((PushKey(project_id, branch), hint))


router = routing.Router(
    merge_request_router,
    system_hook_router,
    status_check_router,
    pipeline_router,
    note_router,
    push_router,
)


# -- HTTP -------------------------------------------------------------------------------------


def _reject(status: int, message: str, **log_fields: Any) -> web.Response:
    log.info("delivery_rejected", status=status, error=message, **log_fields)
    return web.json_response({"error": message}, status=status)


def _parse_json(body: bytes) -> Any:
    if not body:
        raise PayloadError("empty body: expected a JSON object")
    try:
        return json.loads(body)
    except RecursionError:
        raise PayloadError("JSON is nested too deeply") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise PayloadError("malformed JSON: a number has too many digits") from None
        raise PayloadError(f"malformed JSON: {str(exc)[:200]}") from None


async def _interpret(body: bytes, kind: str, *, status_check: bool) -> Delivery:
    """Parse and classify; PayloadError says what is wrong with the delivery."""
    data = _parse_json(body)
    if not isinstance(data, dict):
        raise PayloadError(f"expected a JSON object, got {_describe(data)}")
    if status_check:
        if "external_approval_rule" not in data:
            raise PayloadError(
                "not a GitLab delivery: no X-Gitlab-Event header and no external_approval_rule"
            )
        _mapping(data["external_approval_rule"], "external_approval_rule")
    delivery = Delivery(kind=kind)
    await router.dispatch(sansio.Event(data, event=kind), delivery)
    return delivery


def interpret_in_worker(body: bytes, kind: str, status_check: bool) -> tuple[str, Any]:
    """`_interpret` in the helper process: ("ok", Delivery), ("invalid", why) for a PayloadError,
    ("unreadable", what) for anything else (the sender's payload still: answered 400)."""
    try:
        return "ok", asyncio.run(_interpret(body, kind, status_check=status_check))
    except PayloadError as exc:
        return "invalid", str(exc)
    except Exception as exc:
        return "unreadable", f"{type(exc).__name__}: {str(exc)[:300]}"


class OffLoopInterpreter:
    """Parses and classifies large bodies in one helper process, started on first use (most
    installations never receive a body over LARGE_BODY_BYTES), so no delivery blocks the event
    loop for its parse. Only the body goes there and only the few MR keys come back.

    A helper that dies (killed, out of memory) is replaced once per delivery; a body that kills
    two in a row is refused as unreadable."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: never fork a process that runs threads (the record's writer, the loop's).
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def interpret(self, body: bytes, kind: str, *, status_check: bool) -> Delivery:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._executor()
            try:
                outcome, value = await loop.run_in_executor(
                    pool, interpret_in_worker, body, kind, status_check
                )
            except BrokenProcessPool:
                log.error("body_parser_died", attempt=attempt, body_bytes=len(body))
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                if attempt == 2:
                    raise PayloadError("the delivery could not be interpreted") from None
                continue
            if outcome == "ok":
                return value
            if outcome == "invalid":
                raise PayloadError(value)
            raise _Unreadable(value)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the helper process (if one was started); idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class _Unreadable(Exception):
    """The helper process met an error no check foresaw (the message names it)."""


def _same_secret(given: str | None, expected: str) -> bool:
    # Header values are decoded with surrogateescape: encode them back the same way.
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode()
    )


def _valid_signature(signature: str | None, secret: str, body: bytes) -> bool:
    """X-Gitlab-Signature (17.3+): lowercase hex HMAC-SHA256 of the raw body, no prefix."""
    if signature is None:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = signature.strip().lower().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.encode())


def _logged_ids(headers: Mapping[str, str]) -> dict[str, str]:
    """The delivery's ids for log lines (truncated: they are whatever the sender put there)."""
    ids = {
        "event_uuid": headers.get("X-Gitlab-Event-UUID"),
        "webhook_uuid": headers.get("X-Gitlab-Webhook-UUID"),
        "idempotency_key": headers.get("Idempotency-Key"),
    }
    return {k: v[:LOGGED_HEADER_CHARS] for k, v in ids.items() if v}


def _body_excerpt(body: bytes) -> str:
    excerpt = body[:LOGGED_BODY_BYTES].decode("utf-8", "backslashreplace")
    return excerpt + ("..." if len(body) > LOGGED_BODY_BYTES else "")


def _excerpt(body: bytes) -> dict[str, Any]:
    """Log fields for a body that could not be used (built only then)."""
    return {"body_bytes": len(body), "body_excerpt": _body_excerpt(body)}


async def webhook_method_not_allowed(request: web.Request) -> web.Response:
    """Anything but POST on /webhook: a JSON 405 rather than aiohttp's text one."""
    method = request.method[:LOGGED_HEADER_CHARS]
    log.info(
        "delivery_rejected",
        status=405,
        method=method,
        remote=request.remote,
        **_logged_ids(request.headers),
    )
    response = web.json_response(
        {"error": f"method {method} is not allowed: GitLab delivers with POST"},
        status=405,
        headers={"Allow": "POST"},
    )
    if not request.content.is_eof():
        await _answer_and_hang_up(request, response)
    return response


class _Refused(Exception):
    """Answer this delivery with an error (status, metrics outcome, message, extra log fields)."""

    def __init__(
        self, status: int, outcome: str, message: str, *, close: bool = False, **log_fields: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message
        self.close = close  # the body stream is broken or stalled: no keep-alive after this
        self.log_fields = log_fields


def _too_large(limit: int | None) -> _Refused:
    message = "body too large" if limit is None else f"body larger than {limit} bytes"
    return _Refused(413, "too_large", f"{message} (MAX_BODY_BYTES)")


async def _read_body(request: web.Request, max_bytes: int | None) -> bytes:
    """The raw body, refusing a declared size over the limit before reading a byte."""
    size = request.content_length
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _too_large(max_bytes)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked or compressed: aiohttp counted it
        raise _too_large(max_bytes) from None
    except (web.RequestPayloadError, OSError) as exc:  # e.g. broken gzip
        detail = getattr(exc.__cause__, "message", None) or " ".join(str(exc).split())
        message = f"body could not be read: {detail[:200]}"
        raise _Refused(400, "malformed", message, close=True) from None


def _check_encoding(request: web.BaseRequest) -> None:
    """GitLab never compresses a delivery: any Content-Encoding but identity is refused before a
    byte of the body is read (aiohttp would inflate it, on the event loop, even to drain it)."""
    encodings = [
        part.strip().lower()
        for value in request.headers.getall("Content-Encoding", ())
        for part in value.split(",")
    ]
    refused = [e for e in encodings if e not in ("", "identity")]
    if refused:
        shown = ", ".join(e[:LOGGED_HEADER_CHARS] for e in refused[:3])
        raise _Refused(
            415,
            "unsupported_encoding",
            f"Content-Encoding {shown} is not accepted: GitLab sends deliveries uncompressed",
        )


def _check_token(headers: Mapping[str, str], secret: str) -> None:
    token = headers.get("X-Gitlab-Token")
    if not _same_secret(token, secret):
        reason = "missing" if token is None else "wrong"
        raise _Refused(401, "unauthorized", f"{reason} X-Gitlab-Token")


def _check_signature(headers: Mapping[str, str], secret: str, body: bytes) -> None:
    signature = headers.get("X-Gitlab-Signature")
    if not _valid_signature(signature, secret, body):
        reason = "missing" if signature is None else "invalid"
        raise _Refused(401, "unauthorized", f"{reason} X-Gitlab-Signature")


async def _answer_and_hang_up(request: web.Request, response: web.Response) -> None:
    """Send a refusal, then close the connection without reading the rest of the body.

    aiohttp would otherwise read (and inflate, when compressed) whatever the sender still sends,
    for up to 10 s, before the connection could serve anything else. The answer is written out
    first (`Connection: close`); closing the transport flushes it, then stops reading."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


# (delivery id or None, the delivery's keys and hints) -> "queued", "held" (PostgreSQL is away:
# kept in memory until it answers), "duplicate", "unavailable" (shutting down, or too much held),
# "invalid" (PostgreSQL cannot store the delivery's values: a 400) or "failed" (PostgreSQL
# answered with another error: a 503, not held)
Accepted = Literal["queued", "held", "duplicate", "unavailable", "invalid", "failed"]
Accept = Callable[[str | None, list[tuple[MRKey | BranchKey, Hint]]], Awaitable[Accepted]]


async def _accepted(
    accept: Accept, dedupe_id: str | None, delivery: Delivery, context: dict[str, Any]
) -> tuple[str, web.Response]:
    """The answer to a delivery once the fleet's queue has taken it (or not)."""
    outcome = await accept(dedupe_id, list(delivery.work))
    if outcome == "duplicate":
        log.info("delivery_duplicate", **context)
        return "duplicate", web.json_response({"status": "duplicate"})
    if outcome == "unavailable":
        return "unavailable", _reject(503, "shutting down: deliver again later", **context)
    if outcome == "invalid":
        return "invalid", _reject(
            400,
            "the delivery holds a value the work queue cannot store (see the bot's log)",
            **context,
        )
    if outcome == "failed":
        return "failed", _reject(
            503, "the work queue could not store the delivery: deliver again later", **context
        )
    queued = [str(key) for key, _ in delivery.work]
    if outcome == "held":
        log.warning("delivery_held", keys=queued, reason="PostgreSQL is unreachable", **context)
        body = {"status": "queued", "queued": queued, "held": True}
        return "held", web.json_response(body, status=202)
    log.info("delivery_queued", keys=queued, **context)
    return "queued", web.json_response({"status": "queued", "queued": queued}, status=202)


def make_webhook_handler(
    *,
    webhook_secret: str | None,
    status_check_secret: str | None,
    submit: Callable[[MRKey | BranchKey, Hint], bool],
    on_delivery: Callable[[str, str], None] | None = None,
    max_body_bytes: int | None = None,
    body_timeout: float = BODY_TIMEOUT,
    deliveries: DeliveryMemory | None = None,
    interpreter: OffLoopInterpreter | None = None,
    accept: Accept | None = None,
) -> Callable[[web.Request], Any]:
    """Build the POST /webhook handler around the secrets and the queue's submit.

    `max_body_bytes` should be the app's client_max_size: a declared Content-Length above it is
    refused before reading (aiohttp itself stops a chunked or compressed body at that size).
    `deliveries` remembers accepted webhook ids (a fresh bounded memory by default).
    `interpreter` parses bodies over LARGE_BODY_BYTES off the event loop (its owner closes it).
    `accept` (DATABASE_URL) replaces `submit` and `deliveries`: it commits the delivery's keys
    and id to the fleet's queue before the answer, and says whether it was new
    (bot/service/pgqueue.py).
    """
    seen = deliveries if deliveries is not None else DeliveryMemory()
    off_loop = interpreter if interpreter is not None else OffLoopInterpreter()

    def counted(kind: str, outcome: str, response: web.Response) -> web.Response:
        if on_delivery is not None:
            on_delivery(kind, outcome)
        return response

    async def verified_delivery(
        request: web.Request, kind: str, status_check: bool, context: dict[str, Any]
    ) -> Delivery:
        """Authenticate, read and interpret, or raise _Refused."""
        _check_encoding(request)
        # A webhook's token is checked before its body is read; a status check signs its body.
        if not status_check and webhook_secret is not None:
            _check_token(request.headers, webhook_secret)
        if request.content.is_eof():
            # The whole body came with the headers (GitLab's usual delivery): reading it cannot
            # stall, so it needs no timer (arming and cancelling one costs every delivery).
            body = await _read_body(request, max_body_bytes)
        else:
            try:
                async with asyncio.timeout(body_timeout):
                    body = await _read_body(request, max_body_bytes)
            except TimeoutError:
                message = f"body not received in {body_timeout:g} s"
                raise _Refused(400, "malformed", message, close=True) from None
        large = len(body) > LARGE_BODY_BYTES
        if status_check and status_check_secret is not None:
            if large:  # hashlib lets go of the GIL for big inputs: a thread frees the loop
                await asyncio.to_thread(
                    _check_signature, request.headers, status_check_secret, body
                )
            else:
                _check_signature(request.headers, status_check_secret, body)
        try:
            if large:
                return await off_loop.interpret(body, kind, status_check=status_check)
            return await _interpret(body, kind, status_check=status_check)
        except PayloadError as exc:
            raise _Refused(400, "malformed", str(exc), **_excerpt(body)) from None
        except _Unreadable as exc:
            log.error("delivery_unreadable", error=str(exc), **context, **_excerpt(body))
            message = "the delivery could not be interpreted as a GitLab payload"
            raise _Refused(400, "malformed", message, **_excerpt(body)) from None
        except Exception:
            # A shape no check foresaw: still the sender's payload, so a 400 (and a bug to fix).
            log.exception("delivery_unreadable", **context, **_excerpt(body))
            message = "the delivery could not be interpreted as a GitLab payload"
            raise _Refused(400, "malformed", message, **_excerpt(body)) from None

    async def webhook(request: web.Request) -> web.Response:
        headers = request.headers
        event_name = headers.get("X-Gitlab-Event")
        kind = event_name or STATUS_CHECK_EVENT
        context: dict[str, Any] = {
            "gitlab_event": kind[:LOGGED_HEADER_CHARS],
            "remote": request.remote,
            **_logged_ids(headers),
        }
        try:
            delivery = await verified_delivery(request, kind, not event_name, context)
        except _Refused as refused:
            response = _reject(refused.status, refused.message, **context, **refused.log_fields)
            counted(kind, refused.outcome, response)
            if refused.close or not request.content.is_eof():
                await _answer_and_hang_up(request, response)
            return response
        if not delivery.work:
            reason = delivery.ignored or f"event {kind[:60]!r} is not one the bot acts on"
            log.info("delivery_ignored", reason=reason, **context)
            return counted(
                kind, "ignored", web.json_response({"status": "ignored", "reason": reason})
            )
        # Status-check requests carry no delivery id: GitLab's Retry must always re-evaluate.
        dedupe_id = delivery_id(headers) if event_name else None
        if accept is not None:
            return counted(kind, *await _accepted(accept, dedupe_id, delivery, context))
        if dedupe_id is not None and dedupe_id in seen:
            log.info("delivery_duplicate", **context)
            return counted(kind, "duplicate", web.json_response({"status": "duplicate"}))
        queued = [str(key) for key, hint in delivery.work if submit(key, hint)]
        if not queued:
            response = _reject(503, "shutting down: deliver again later", **context)
            return counted(kind, "unavailable", response)
        if dedupe_id is not None:
            seen.remember(dedupe_id)  # only once accepted: a 400 or 401 must not block a retry
        log.info("delivery_queued", keys=queued, **context)
        return counted(
            kind, "queued", web.json_response({"status": "queued", "queued": queued}, status=202)
        )

    return webhook

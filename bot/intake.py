"""POST /webhook: verify, parse, classify, enqueue, answer (DESIGN 4.3) — no GitLab call here.

Every GitLab delivery lands on one URL: project, group and system webhooks (`X-Gitlab-Event`,
`X-Gitlab-Token`) and external status-check requests (no event header, `external_approval_rule` in
the body, maybe no Content-Type, maybe `X-Gitlab-Signature`). Each concern has its own gidgetlab
router; a callback only turns the payload into MR keys. Answers: 202 queued, 200 valid but
ignored, 400 malformed, 401 bad token or signature, 413 too large (aiohttp's client_max_size).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from gidgetlab import routing, sansio

from bot.keys import BranchKey, Hint, MRKey
from bot.logs import get_logger

log = get_logger(__name__)

# Status-check requests carry no event header; we give them a name so a router can take them.
STATUS_CHECK_EVENT = "External Status Check"
CLOSING_ACTIONS = frozenset({"close", "merge"})
RECHECK_COMMAND = "/recheck"


class PayloadError(Exception):
    """The delivery is not what GitLab sends; the message says what is wrong (answered 400)."""


@dataclass
class Delivery:
    """What the routers made of one delivery."""

    kind: str
    work: list[tuple[MRKey | BranchKey, Hint]] = field(default_factory=list)
    ignored: str | None = None


# -- payload access ---------------------------------------------------------------------------


def _mapping(data: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PayloadError(f"`{name}` must be an object")
    return data


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PayloadError(f"`{name}` must be a positive integer, got {json.dumps(value)[:40]}")
    return value


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _project_id(data: Mapping[str, Any], attributes: Mapping[str, Any]) -> int:
    """The MR's (target) project: `target_project_id` when present, else the payload's project."""
    if "target_project_id" in attributes:
        return _positive_int(attributes["target_project_id"], "object_attributes.target_project_id")
    project = _mapping(data.get("project"), "project")
    return _positive_int(project.get("id"), "project.id")


def _project_path(data: Mapping[str, Any]) -> str | None:
    project = data.get("project")
    return (
        _optional_str(project.get("path_with_namespace")) if isinstance(project, Mapping) else None
    )


def _merge_request_work(event: sansio.Event, delivery: Delivery) -> None:
    data = event.data
    attributes = _mapping(data.get("object_attributes"), "object_attributes")
    action = attributes.get("action")
    if action in CLOSING_ACTIONS:
        delivery.ignored = f"merge request {action}d: nothing to decide"
        return
    key = MRKey(
        _project_id(data, attributes), _positive_int(attributes.get("iid"), "object_attributes.iid")
    )
    last_commit = attributes.get("last_commit")
    hint = Hint(
        trigger=f"{delivery.kind}:{action}" if isinstance(action, str) else delivery.kind,
        project_path=_project_path(data),
        target_branch=_optional_str(attributes.get("target_branch")),
        source_branch=_optional_str(attributes.get("source_branch")),
        sha=_optional_str(last_commit.get("id")) if isinstance(last_commit, Mapping) else None,
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
    if event.data.get("object_kind") != "merge_request":
        delivery.ignored = (
            f"system hook event {str(event.data.get('object_kind'))[:40]!r} is not acted on"
        )
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
    hint = Hint(trigger=f"pipeline:{attributes.get('status')}", project_path=_project_path(data))
    merge_request = data.get("merge_request")
    if isinstance(merge_request, Mapping) and merge_request.get("iid") is not None:
        target = merge_request.get("target_project_id", project_id)
        key = MRKey(
            _positive_int(target, "merge_request.target_project_id"),
            _positive_int(merge_request.get("iid"), "merge_request.iid"),
        )
        delivery.work.append((key, hint))
        return
    ref = attributes.get("ref")
    if attributes.get("tag") or not isinstance(ref, str) or not ref:
        delivery.ignored = "pipeline is not for a branch or merge request"
        return
    delivery.work.append((BranchKey(project_id, ref), hint))


note_router = routing.Router()


def _is_recheck(note: Any) -> bool:
    if not isinstance(note, str):
        return False
    first_line = note.strip().split("\n", 1)[0].strip()
    return first_line == RECHECK_COMMAND or first_line.startswith(RECHECK_COMMAND + " ")


@note_router.register("Note Hook")
async def note_hook(event: sansio.Event, delivery: Delivery) -> None:
    """`/recheck` re-evaluates, e.g. to re-run a passed check (Retry only re-runs failed ones)."""
    data = event.data
    attributes = _mapping(data.get("object_attributes"), "object_attributes")
    if attributes.get("noteable_type") != "MergeRequest":
        delivery.ignored = "note is not on a merge request"
        return
    if not _is_recheck(attributes.get("note")):
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


router = routing.Router(
    merge_request_router, system_hook_router, status_check_router, pipeline_router, note_router
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
        raise PayloadError(f"malformed JSON: {exc}") from None


def _same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _valid_signature(signature: str | None, secret: str, body: bytes) -> bool:
    """X-Gitlab-Signature (17.3+): lowercase hex HMAC-SHA256 of the raw body, no prefix."""
    if signature is None:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.strip().lower().encode(), expected.encode())


def make_webhook_handler(
    *,
    webhook_secret: str | None,
    status_check_secret: str | None,
    submit: Callable[[MRKey | BranchKey, Hint], bool],
    on_delivery: Callable[[str, str], None] | None = None,
) -> Callable[[web.Request], Any]:
    """Build the POST /webhook handler around the secrets and the queue's submit."""

    def counted(kind: str, outcome: str, response: web.Response) -> web.Response:
        if on_delivery is not None:
            on_delivery(kind, outcome)
        return response

    async def webhook(request: web.Request) -> web.Response:
        headers = request.headers
        ids = {
            "event_uuid": headers.get("X-Gitlab-Event-UUID"),
            "webhook_uuid": headers.get("X-Gitlab-Webhook-UUID"),
            "idempotency_key": headers.get("Idempotency-Key"),
        }
        ids = {k: v for k, v in ids.items() if v}
        body = await request.read()
        event_name = headers.get("X-Gitlab-Event")
        if event_name:
            kind = event_name
            if webhook_secret is not None and not _same_secret(
                headers.get("X-Gitlab-Token"), webhook_secret
            ):
                reason = "missing" if "X-Gitlab-Token" not in headers else "wrong"
                return counted(
                    kind,
                    "unauthorized",
                    _reject(401, f"{reason} X-Gitlab-Token", gitlab_event=kind, **ids),
                )
        else:
            kind = STATUS_CHECK_EVENT
            if status_check_secret is not None and not _valid_signature(
                headers.get("X-Gitlab-Signature"), status_check_secret, body
            ):
                reason = "missing" if "X-Gitlab-Signature" not in headers else "invalid"
                return counted(
                    kind,
                    "unauthorized",
                    _reject(401, f"{reason} X-Gitlab-Signature", gitlab_event=kind, **ids),
                )
        try:
            data = _parse_json(body)
            if not isinstance(data, dict):
                raise PayloadError("expected a JSON object")
            if not event_name and "external_approval_rule" not in data:
                raise PayloadError(
                    "not a GitLab delivery: no X-Gitlab-Event header and no external_approval_rule"
                )
            delivery = Delivery(kind=kind)
            await router.dispatch(sansio.Event(data, event=kind), delivery)
        except PayloadError as exc:
            return counted(kind, "malformed", _reject(400, str(exc), gitlab_event=kind, **ids))
        if not delivery.work:
            reason = delivery.ignored or f"event {kind[:60]!r} is not one the bot acts on"
            log.info("delivery_ignored", gitlab_event=kind, reason=reason, **ids)
            return counted(
                kind, "ignored", web.json_response({"status": "ignored", "reason": reason})
            )
        queued = [str(key) for key, hint in delivery.work if submit(key, hint)]
        if not queued:
            return counted(
                kind,
                "unavailable",
                _reject(503, "shutting down: deliver again later", gitlab_event=kind, **ids),
            )
        log.info("delivery_queued", gitlab_event=kind, keys=queued, **ids)
        return counted(
            kind, "queued", web.json_response({"status": "queued", "queued": queued}, status=202)
        )

    return webhook

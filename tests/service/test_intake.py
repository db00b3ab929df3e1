"""POST /webhook against hostile and broken input, delivery de-duplication, and floods.

Every test runs the bot as a real server: a bad delivery must get a 4xx (or a 200 "ignored") with a
JSON `{"error": ...}`, never a 5xx, and must cause no evaluation and no GitLab call.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from bot.keys import BranchKey, Hint, MRKey
from bot.service.app import QUEUE
from bot.service.intake import MAX_REF_CHARS, DeliveryMemory, make_webhook_handler
from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import WEBHOOK_SECRET, Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
MR_PATH = "/projects/1/merge_requests/1"


def seed(gitlab: FakeGitLab, project_id: int = 1, iid: int = 1, **mr: Any) -> None:
    """A project with one MR whose title passes `conventional-title`, and that check."""
    seed_project(
        gitlab, ["conventional-title"], project_id=project_id, path=f"acme/app{project_id}"
    )
    seed_mr(gitlab, project_id=project_id, iid=iid, **{"sha": SHA, **mr})


async def no_work_done(gitlab: FakeGitLab, bot: Bot) -> None:
    """Nothing was queued or evaluated and GitLab was not called (since the last reset).

    A submit shows at once in the queue's counters (queued, running or evaluated), so only a
    short grace is needed for a stray GitLab call to land."""
    await asyncio.sleep(0.01)
    queue = bot.app[QUEUE]
    assert (queue.evaluations, queue.depth, queue.running) == (0, 0, 0)
    assert [f"{c.method} {c.path}" for c in gitlab.calls] == []


def mr_reads(gitlab: FakeGitLab, path: str = MR_PATH) -> int:
    return sum(1 for c in gitlab.calls if c.method == "GET" and c.path.endswith(path))


def set_path(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with DELETE, remove) the dotted `path` in a copy of `payload`."""
    payload = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = payload
    for name in parents:
        node = node[name]
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return payload


DELETE = object()


async def raw_request(bot: Bot, head: bytes, body: bytes, method: bytes = b"POST") -> Any:
    """Send bytes the aiohttp client refuses to send (e.g. invalid UTF-8 in a header value)."""
    url = URL(bot.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        method + b" /webhook HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n" + head
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    assert b"application/json" in headers, response
    return int(status_line.split()[1]), json.loads(content)


# -- broken bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty body"),
        (b"{", "malformed JSON"),
        (json.dumps(payloads.merge_request_hook()).encode()[:-1], "malformed JSON"),
        (b'{"object_attributes": "\xff\xfe"}', "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"object_attributes=1&iid=2", "malformed JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b'"a string"', "expected a JSON object, got the string"),
        (b"42", "expected a JSON object, got 42"),
        (b"null", "expected a JSON object, got null"),
        (b"true", "expected a JSON object, got true"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON is nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "JSON is nested too deeply"),
        (b'{"object_attributes": {"iid": 1' + b"0" * 5000 + b"}}", "a number has too many digits"),
    ],
    ids=[
        "empty", "brace", "truncated", "invalid-utf8-string", "invalid-utf8", "form-encoded",
        "list", "string", "number", "null", "bool", "100k-nested-lists", "100k-nested-objects",
        "5000-digit-number",
    ],
)  # fmt: skip
async def test_broken_bodies_are_a_400_with_the_reason(
    gitlab: FakeGitLab, bot: Bot, body: bytes, error: str
) -> None:
    gitlab.reset_calls()
    for event in ("Merge Request Hook", None):  # a webhook, and a status-check request
        status, answer = await bot.deliver(None, raw=body, event=event)
        assert status == 400, answer
        assert error in answer["error"]
    await no_work_done(gitlab, bot)


# -- wrong types in every field the routers read ----------------------------------------------

MR = payloads.merge_request_hook()
MR_WITHOUT_TARGET = set_path(MR, "object_attributes.target_project_id", DELETE)
PIPELINE = payloads.pipeline_hook()
BRANCH_PIPELINE = payloads.pipeline_hook(iid=None)
NOTE = payloads.note_hook()
SYSTEM = payloads.system_hook()
STATUS_CHECK = payloads.status_check_request()

WRONG_TYPES: list[tuple[str | None, dict[str, Any], str, Any, str]] = [
    # (event, payload, field, value, what the error must name)
    ("Merge Request Hook", MR, "object_attributes", [], "`object_attributes` must be an object"),
    ("Merge Request Hook", MR, "object_attributes", "x", "`object_attributes` must be an object"),
    ("Merge Request Hook", MR, "object_attributes", None, "`object_attributes` must be an object"),
    ("Merge Request Hook", MR, "object_attributes", DELETE, "`object_attributes` must be an"),
    ("Merge Request Hook", MR, "object_attributes.iid", "abc", "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", "12", "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", 1.5, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", 1.0, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", True, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", False, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", 10**30, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", 2**63, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", -1, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", 0, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", None, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.iid", {"id": 1}, "`object_attributes.iid`"),
    ("Merge Request Hook", MR, "object_attributes.target_project_id", "1", "target_project_id"),
    ("Merge Request Hook", MR, "object_attributes.target_project_id", True, "target_project_id"),
    ("Merge Request Hook", MR_WITHOUT_TARGET, "project", DELETE, "`project` must be an object"),
    ("Merge Request Hook", MR_WITHOUT_TARGET, "project.id", DELETE, "`project.id`"),
    ("Merge Request Hook", MR_WITHOUT_TARGET, "project.id", "acme/app", "`project.id`"),
    ("Merge Request Hook", MR, "project", ["acme"], "`project` must be an object"),
    ("Merge Request Hook", MR, "project.path_with_namespace", {"a": 1}, "path_with_namespace"),
    ("Merge Request Hook", MR, "object_attributes.action", ["open"], "`object_attributes.action`"),
    ("Merge Request Hook", MR, "object_attributes.action", {"a": 1}, "`object_attributes.action`"),
    ("Merge Request Hook", MR, "object_attributes.action", 5, "`object_attributes.action`"),
    ("Merge Request Hook", MR, "object_attributes.target_branch", {"n": "main"}, "target_branch"),
    ("Merge Request Hook", MR, "object_attributes.source_branch", ["x"], "source_branch"),
    ("Merge Request Hook", MR, "object_attributes.last_commit", "abc", "last_commit"),
    ("Merge Request Hook", MR, "object_attributes.last_commit.id", 5, "last_commit.id"),
    ("System Hook", SYSTEM, "object_kind", ["merge_request"], "`object_kind` must be a string"),
    ("System Hook", SYSTEM, "object_attributes", DELETE, "`object_attributes` must be an"),
    ("System Hook", SYSTEM, "object_attributes.iid", "1", "`object_attributes.iid`"),
    ("Pipeline Hook", PIPELINE, "object_attributes", 7, "`object_attributes` must be an object"),
    ("Pipeline Hook", PIPELINE, "object_attributes.status", {"s": 1}, "status` must be a string"),
    ("Pipeline Hook", PIPELINE, "project.id", "1", "`project.id`"),
    ("Pipeline Hook", PIPELINE, "project", DELETE, "`project` must be an object"),
    ("Pipeline Hook", PIPELINE, "merge_request", "!1", "`merge_request` must be an object"),
    ("Pipeline Hook", PIPELINE, "merge_request.iid", "1", "`merge_request.iid`"),
    ("Pipeline Hook", PIPELINE, "merge_request.target_project_id", -5, "target_project_id"),
    ("Pipeline Hook", BRANCH_PIPELINE, "object_attributes.tag", "no", "`object_attributes.tag`"),
    ("Pipeline Hook", BRANCH_PIPELINE, "object_attributes.ref", 5, "`object_attributes.ref`"),
    ("Pipeline Hook", BRANCH_PIPELINE, "object_attributes.ref", "b" * (MAX_REF_CHARS + 1), "ref"),
    ("Note Hook", NOTE, "object_attributes.noteable_type", 5, "noteable_type"),
    ("Note Hook", NOTE, "object_attributes.note", ["/recheck"], "`object_attributes.note`"),
    ("Note Hook", NOTE, "merge_request", DELETE, "`merge_request` must be an object"),
    ("Note Hook", NOTE, "merge_request.iid", True, "`merge_request.iid`"),
    (None, STATUS_CHECK, "external_approval_rule", "QA", "`external_approval_rule` must be an"),
    (None, STATUS_CHECK, "external_approval_rule", DELETE, "no external_approval_rule"),
    (None, STATUS_CHECK, "object_attributes.iid", [1], "`object_attributes.iid`"),
]


@pytest.mark.parametrize(
    ("event", "payload", "field", "value", "error"),
    WRONG_TYPES,
    ids=[f"{e or 'status-check'}:{f}={str(v)[:12]}" for e, _, f, v, _ in WRONG_TYPES],
)
async def test_a_wrong_type_in_a_field_the_routers_read_is_a_400_naming_it(
    gitlab: FakeGitLab,
    bot: Bot,
    event: str | None,
    payload: dict[str, Any],
    field: str,
    value: Any,
    error: str,
) -> None:
    seed(gitlab)
    gitlab.reset_calls()
    status, answer = await bot.deliver(set_path(payload, field, value), event=event)
    assert status == 400, answer
    assert error in answer["error"]
    assert len(answer["error"]) < 200  # a deep or huge value is described, never dumped
    await no_work_done(gitlab, bot)


async def test_deeply_nested_values_in_fields_are_described_not_rendered(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """Inside the JSON limit, nesting must not reach an error message, a hint or a log line."""
    gitlab.reset_calls()
    deep = json.loads("[" * 900 + "]" * 900)
    cases = [
        ("Merge Request Hook", set_path(MR, "object_attributes.iid", deep)),
        ("Merge Request Hook", set_path(MR, "object_attributes.action", deep)),
        ("System Hook", set_path(SYSTEM, "object_kind", deep)),
        ("Pipeline Hook", set_path(PIPELINE, "object_attributes.status", deep)),
    ]
    for event, payload in cases:
        status, answer = await bot.deliver(payload, event=event)
        assert status == 400, answer
        assert answer["error"].endswith("got an array")
    await no_work_done(gitlab, bot)


async def test_unknown_and_irrelevant_events_are_ignored_with_a_reason(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    gitlab.reset_calls()
    cases = [
        # A deleted branch holds no policies (a push to a branch is work: test_repository)
        (
            "Push Hook",
            {"object_kind": "push", "project_id": 1, "ref": "refs/heads/x", "after": "0" * 40},
        ),
        ("Some Future Hook", MR),
        ("Ünïcødé Hook ✓ 🚀", MR),
        ("System Hook", {"object_kind": "project_create"}),
        ("System Hook", {"event_name": "user_create"}),
        ("Pipeline Hook", set_path(BRANCH_PIPELINE, "object_attributes.tag", True)),
        ("Pipeline Hook", set_path(BRANCH_PIPELINE, "object_attributes.ref", None)),
        ("Note Hook", payloads.note_hook(noteable_type="Issue")),
        ("Note Hook", payloads.note_hook(note="/rechecking is fun")),
        ("Merge Request Hook", set_path(MR, "object_attributes.action", "merge")),
    ]
    for event, payload in cases:
        status, answer = await bot.deliver(payload, event=event)
        assert (status, answer["status"]) == (200, "ignored"), (event, answer)
        assert answer["reason"]
    await no_work_done(gitlab, bot)


async def test_fields_the_bot_does_not_read_cannot_hurt_or_mislead(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """`labels` not a list, objects where GitLab sends strings: the payload is only a hint, so
    the delivery is queued and the verdict comes from GitLab's API (here: a failing title)."""
    seed(gitlab, title="not conventional")
    payload = set_path(MR, "labels", "not-a-list")
    payload = set_path(payload, "object_attributes.title", {"nested": ["feat: looks fine"]})
    payload = set_path(payload, "object_attributes.labels", 7)
    payload = set_path(payload, "user", [None, 1.5])
    status, answer = await bot.deliver(payload)
    assert status == 202, answer
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "failed"


async def test_unicode_everywhere_is_accepted(gitlab: FakeGitLab, bot: Bot) -> None:
    branch = "feature/ünïcødé-分支-🚀-\u202eevil"
    seed(gitlab, title="feat: ünïcødé ✓ 标题 🚀", source_branch=branch)
    payload = set_path(MR, "object_attributes.title", "feat: \ud800 lone surrogate \u0000 nul")
    payload = set_path(payload, "object_attributes.source_branch", branch)
    payload = set_path(payload, "object_attributes.target_branch", "\ud83d")
    payload = set_path(payload, "project.path_with_namespace", "grüppe/äpp-ℵ")
    payload = set_path(payload, "object_attributes.last_commit.id", "ßha-🚀")
    headers = {"X-Gitlab-Event-UUID": "ünïcødé-✓", "X-Gitlab-Instance": "https://gïtlab.example"}
    status, answer = await bot.deliver(payload, headers=headers)
    assert status == 202, answer
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


# -- size, encoding, method, headers ----------------------------------------------------------


async def test_bodies_over_the_limit_get_a_json_413(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    seed(gitlab)
    limit = 64 * 1024
    bot = await start_bot(max_body_bytes=limit)
    body = json.dumps(payloads.merge_request_hook(sha=SHA)).encode()
    exactly = body + b" " * (limit - len(body))
    gitlab.reset_calls()

    async def chunked(data: bytes) -> Any:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    status, answer = await bot.deliver(None, raw=exactly + b" ")
    assert (status, answer) == (413, {"error": f"body larger than {limit} bytes (MAX_BODY_BYTES)"})
    url, auth = f"{bot.url}/webhook", {"X-Gitlab-Event": "Merge Request Hook"}
    auth["X-Gitlab-Token"] = WEBHOOK_SECRET
    async with bot.session.post(url, data=chunked(exactly + b" " * 10), headers=auth) as resp:
        assert resp.status == 413
        assert "MAX_BODY_BYTES" in (await resp.json())["error"]
    # GitLab never compresses: a compressed body is refused before it is read (and never
    # inflated), however small or valid (tests/service/test_hostile_bodies.py has the bombs).
    bomb = gzip.compress(b" " * 20_000_000)  # ~20 kB on the wire, 20 MB once inflated
    headers = {"Content-Encoding": "gzip"}
    status, answer = await bot.deliver(None, raw=bomb, headers=headers)
    assert status == 415 and "uncompressed" in answer["error"]
    status, answer = await bot.deliver(None, raw=b"not gzip at all", headers=headers)
    assert status == 415 and "uncompressed" in answer["error"]
    status, answer = await bot.deliver(None, raw=gzip.compress(body), headers=headers)
    assert status == 415 and "uncompressed" in answer["error"]
    await no_work_done(gitlab, bot)
    status, answer = await bot.deliver(None, raw=exactly)  # at the limit: accepted
    assert status == 202, answer
    # aiohttp logs "Error handling request" for a 500.
    assert "Error handling request" not in [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_get_a_json_405(gitlab: FakeGitLab, bot: Bot, method: str) -> None:
    gitlab.reset_calls()
    async with bot.session.request(method, f"{bot.url}/webhook", data=b"{}") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert "GitLab delivers with POST" in (await resp.json())["error"]
    await no_work_done(gitlab, bot)


async def test_invalid_utf8_in_header_values(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    seed(gitlab)
    bot = await start_bot(status_check_secret="shared_secret")
    gitlab.reset_calls()
    body = json.dumps(payloads.merge_request_hook(sha=SHA)).encode()
    event = b"X-Gitlab-Event: Merge Request Hook\r\n"
    token = b"X-Gitlab-Token: " + WEBHOOK_SECRET.encode() + b"\r\n"
    assert await raw_request(bot, event + b"X-Gitlab-Token: \xff\xfe\xc3\r\n", body) == (
        401,
        {"error": "wrong X-Gitlab-Token"},
    )
    assert await raw_request(bot, b"X-Gitlab-Signature: \xff\xfe\r\n", body) == (
        401,
        {"error": "invalid X-Gitlab-Signature"},
    )
    status, answer = await raw_request(bot, b"X-Gitlab-Event: \xff\xfe Hook\r\n" + token, body)
    assert (status, answer["status"]) == (200, "ignored")
    status, answer = await raw_request(bot, b"X-Gitlab-Event: Merge Request Hook\xff\r\n", body)
    assert status == 401  # a token is needed before anything else
    await no_work_done(gitlab, bot)
    key = b"Idempotency-Key: \xff\xfe-\xe2\x9c\x93\r\nX-Gitlab-Webhook-UUID: \xc0\r\n"
    assert (await raw_request(bot, event + token + key, body))[0] == 202
    assert await raw_request(bot, event + token + key, body) == (200, {"status": "duplicate"})


async def test_a_stalled_body_is_refused_after_the_body_timeout() -> None:
    """GitLab sends the whole body at once; a sender that stops half way must not hold a
    request forever. (The real handler, served with a short timeout.)"""
    submitted: list[Any] = []

    def submit(key: MRKey | BranchKey, hint: Hint) -> bool:
        submitted.append(key)
        return True

    app = web.Application()
    handler = make_webhook_handler(
        webhook_secret=None, status_check_secret=None, submit=submit, body_timeout=0.2
    )
    app.router.add_post("/webhook", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: bot\r\nX-Gitlab-Event: Merge Request Hook\r\n"
            b'Content-Length: 1000\r\n\r\n{"object_attributes": '
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert time.monotonic() - started < 2
        assert head.startswith(b"HTTP/1.1 400")
        writer.close()
    finally:
        await server.close()
    assert submitted == []


async def test_rejections_are_logged_with_ids_but_no_secret_and_no_whole_body(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {
        "X-Gitlab-Event-UUID": "ev-0001",
        "X-Gitlab-Webhook-UUID": "wh-0002",
        "Idempotency-Key": "idem-0003",
    }
    wrong_token = "a-wrong-token-that-must-not-be-logged"
    capsys.readouterr()
    await bot.deliver(MR, token=wrong_token, headers=ids)
    marker = "THE-END-OF-A-LONG-BODY"
    body = b'{"object_attributes": "' + b"x" * 5000 + marker.encode() + b'"'  # truncated JSON
    status, _ = await bot.deliver(None, raw=body, headers=ids)
    assert status == 400
    await bot.deliver(None, raw=b"[" * 50_000, headers=ids)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    rejected = [line for line in lines if line["event"] == "delivery_rejected"]
    assert [line["status"] for line in rejected] == [401, 400, 400]
    for line in rejected:
        assert (line["event_uuid"], line["webhook_uuid"]) == ("ev-0001", "wh-0002")
        assert line["idempotency_key"] == "idem-0003"
        assert line["gitlab_event"] == "Merge Request Hook"
        assert len(json.dumps(line)) < 1000
    assert rejected[0]["error"] == "wrong X-Gitlab-Token"
    assert rejected[1]["body_bytes"] == len(body)
    assert rejected[1]["body_excerpt"].startswith('{"object_attributes": "xxx')
    text = json.dumps(lines)
    assert wrong_token not in text and WEBHOOK_SECRET not in text and marker not in text


# -- delivery de-duplication ------------------------------------------------------------------


async def test_a_webhook_sent_again_is_answered_duplicate_and_not_queued_again(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """GitLab 17.4+ keeps `Idempotency-Key` when it sends a webhook again, with a new
    `X-Gitlab-Webhook-UUID` each time."""
    seed(gitlab)
    payload = payloads.merge_request_hook(sha=SHA)
    first = {"Idempotency-Key": "f5e5f430-f57b", "X-Gitlab-Webhook-UUID": "uuid-1"}
    again = {"Idempotency-Key": "f5e5f430-f57b", "X-Gitlab-Webhook-UUID": "uuid-2"}
    assert (await bot.deliver(payload, headers=first))[0] == 202
    await bot.settle()
    assert await bot.deliver(payload, headers=again) == (200, {"status": "duplicate"})
    await bot.settle()
    assert mr_reads(gitlab) == 1
    other = {"Idempotency-Key": "another-event", "X-Gitlab-Webhook-UUID": "uuid-3"}
    assert (await bot.deliver(payload, headers=other))[0] == 202  # same MR, new event
    await bot.settle()
    assert mr_reads(gitlab) == 2


async def test_webhook_uuid_is_the_fallback_id_and_event_uuid_is_no_delivery_id(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """Before 17.4 only a replay of the very same request repeats X-Gitlab-Webhook-UUID.
    X-Gitlab-Event-UUID is shared by every hook and event that a webhook-triggered API call
    causes (GitLab's recursion detection), e.g. for two different MRs: deduplicating on it
    would lose deliveries."""
    seed(gitlab, iid=1)
    seed(gitlab, iid=2)
    one = payloads.merge_request_hook(iid=1, sha=SHA)
    two = payloads.merge_request_hook(iid=2, sha=SHA)
    assert (await bot.deliver(one, headers={"X-Gitlab-Webhook-UUID": "w-1"}))[0] == 202
    assert await bot.deliver(one, headers={"X-Gitlab-Webhook-UUID": "w-1"}) == (
        200,
        {"status": "duplicate"},
    )
    shared = {"X-Gitlab-Event-UUID": "e-shared"}
    assert (await bot.deliver(one, headers={**shared, "X-Gitlab-Webhook-UUID": "w-2"}))[0] == 202
    assert (await bot.deliver(two, headers={**shared, "X-Gitlab-Webhook-UUID": "w-3"}))[0] == 202
    assert (await bot.deliver(two, headers=shared))[0] == 202
    await bot.settle()
    assert mr_reads(gitlab, "/merge_requests/2") >= 1


async def test_a_refused_delivery_does_not_block_its_valid_retry(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    key = {"Idempotency-Key": "retry-me"}
    payload = payloads.merge_request_hook(sha=SHA)
    assert (await bot.deliver(payload, token="wrong", headers=key))[0] == 401
    assert (await bot.deliver(None, raw=b'{"object_attributes": ', headers=key))[0] == 400
    closed = set_path(payload, "object_attributes.action", "close")
    assert (await bot.deliver(closed, headers=key))[1]["status"] == "ignored"
    assert (await bot.deliver(payload, headers=key))[0] == 202
    assert (await bot.deliver(payload, headers=key))[1] == {"status": "duplicate"}


async def test_status_check_requests_are_never_deduplicated(gitlab: FakeGitLab, bot: Bot) -> None:
    """They carry no delivery id, and GitLab's Retry re-sends the same body: it must re-run."""
    seed(gitlab)
    body = json.dumps(payloads.status_check_request(sha=SHA)).encode()
    for _ in range(2):
        status, answer = await bot.deliver(
            None, raw=body, event=None, headers={"Idempotency-Key": "same"}
        )
        assert status == 202, answer
        await bot.settle()
    assert mr_reads(gitlab) == 2


def test_delivery_memory_is_bounded_and_forgets() -> None:
    now = 0.0
    memory = DeliveryMemory(max_keys=3, ttl=60.0, timer=lambda: now)
    for n in range(5):
        memory.remember(f"idempotency-key:{n}")
    assert len(memory) == 3
    assert "idempotency-key:0" not in memory and "idempotency-key:1" not in memory
    assert all(f"idempotency-key:{n}" in memory for n in (2, 3, 4))
    huge = "x" * 1_000_000
    memory.remember(huge)
    assert huge in memory and len(memory) == 3
    now = 61.0
    assert len(memory) == 0 and huge not in memory


# -- floods -----------------------------------------------------------------------------------


async def test_a_flood_keeps_one_queue_entry_per_mr_and_the_server_responsive(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """5,000 deliveries for 50 MRs while GitLab is slow: the queue never holds more than one
    waiting entry per MR (plus the few being evaluated), /healthz keeps answering, and every MR
    ends with its verdict."""
    mrs = 50
    for iid in range(1, mrs + 1):
        seed(gitlab, iid=iid)
    gitlab.latency = 0.05
    queue = bot.app[QUEUE]
    peak_waiting = peak = 0
    health: list[float] = []
    flooding = True

    async def watch() -> None:
        nonlocal peak, peak_waiting
        while flooding:
            peak_waiting = max(peak_waiting, queue.depth)
            peak = max(peak, queue.depth + queue.running)
            await asyncio.sleep(0)

    async def probe_health() -> None:
        while flooding:
            started = time.monotonic()
            async with bot.session.get(f"{bot.url}/healthz") as resp:
                assert resp.status == 200
            health.append(time.monotonic() - started)
            await asyncio.sleep(0.05)

    bodies = [
        json.dumps(payloads.merge_request_hook(iid=iid, sha=SHA)).encode()
        for iid in range(1, mrs + 1)
    ]
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": WEBHOOK_SECRET}
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as flood:

        async def sender(worker: int) -> None:
            for n in range(worker, 5000, 64):
                body = bodies[n % mrs]
                async with flood.post(f"{bot.url}/webhook", data=body, headers=headers) as r:
                    statuses.append(r.status)

        watcher = asyncio.create_task(watch())
        prober = asyncio.create_task(probe_health())
        await asyncio.gather(*(sender(w) for w in range(64)))
        flooding = False
        await asyncio.gather(watcher, prober)
    assert statuses == [202] * 5000
    # One waiting entry per MR at most; an MR being evaluated may also wait for one more run.
    assert 0 < peak_waiting <= mrs
    assert peak <= mrs + bot.settings.workers
    assert health and max(health) < 1.0
    gitlab.latency = 0.0
    await bot.settle(limit=30)
    assert queue.evaluations < 5000 / 5
    for iid in range(1, mrs + 1):
        assert gitlab.check_status(1, iid, "conventional-title") == "passed"

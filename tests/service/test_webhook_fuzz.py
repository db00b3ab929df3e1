"""Property-based fuzzing of POST /webhook on the bot running as a real server.

Whatever arrives — arbitrary JSON, the real samples with any field replaced or deleted, arbitrary
bytes, arbitrary header values, unsigned or wrongly signed status-check requests — the answer is
one of 200/202/400/401/405/413 with a JSON body holding `status` or `error`, GitLab is only ever
called about projects of accepted deliveries, no delivery is logged as `delivery_unreadable`, and
afterwards the bot is healthy and still judges a real delivery correctly.

One bot per test function, many examples against it. Deterministic (derandomize, no example
database), a few seconds per test.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import payloads
from tests.conftest import WEBHOOK_SECRET, Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
STATUS_SECRET = "shared_secret"
ALLOWED = {200, 202, 400, 401, 405, 413}
EVENTS = ["Merge Request Hook", "System Hook", "Pipeline Hook", "Note Hook", "Push Hook"]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# -- strategies -------------------------------------------------------------------------------

# Values a router might choke on, mixed in so that edge cases come up in few examples.
TRICKY = [0, -1, 1, 2**63 - 1, 2**63, 10**40, True, False, 1.0, "", "1", "abc", [], {}, None]
TRICKY += ["merge_request", "close", "merge", "MergeRequest", "/recheck", "success", "main"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(TRICKY)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40).map(str.strip)

Path = tuple[str | int, ...]


def paths(value: Any, prefix: Path = ()) -> list[Path]:
    """Every key and index path in a JSON value."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    found: list[Path] = []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


# The fields the routers read, per kind of payload, so that mutations hit them often.
MR_READ: list[Path] = [
    ("object_attributes",),
    ("object_attributes", "iid"),
    ("object_attributes", "action"),
    ("object_attributes", "target_project_id"),
    ("object_attributes", "target_branch"),
    ("object_attributes", "source_branch"),
    ("object_attributes", "last_commit"),
    ("object_attributes", "last_commit", "id"),
    ("object_attributes", "labels"),
    ("project",),
    ("project", "id"),
    ("project", "path_with_namespace"),
    ("labels",),
]
PIPELINE_READ: list[Path] = [
    ("object_attributes",),
    ("object_attributes", "status"),
    ("object_attributes", "ref"),
    ("object_attributes", "tag"),
    ("project",),
    ("project", "id"),
    ("project", "path_with_namespace"),
    ("merge_request",),
    ("merge_request", "iid"),
    ("merge_request", "target_project_id"),
]
NOTE_READ: list[Path] = [
    ("object_attributes",),
    ("object_attributes", "note"),
    ("object_attributes", "noteable_type"),
    ("merge_request",),
    ("merge_request", "iid"),
    ("merge_request", "target_project_id"),
    ("project",),
    ("project", "id"),
]

BASES: list[tuple[str | None, dict[str, Any], list[Path]]] = [
    ("Merge Request Hook", payloads.merge_request_hook(sha=SHA), MR_READ),
    (
        "Merge Request Hook",
        payloads.merge_request_hook(sha=SHA, sample_name="merge-request-hook-open-14x.json"),
        MR_READ,
    ),
    (
        None,
        payloads.status_check_request(sha=SHA, check_name="conventional-title"),
        [*MR_READ, ("external_approval_rule",)],
    ),
    ("System Hook", payloads.system_hook(sha=SHA), [*MR_READ, ("object_kind",)]),
    ("Pipeline Hook", payloads.pipeline_hook(sha=SHA), PIPELINE_READ),
    ("Pipeline Hook", payloads.pipeline_hook(sha=SHA, iid=None), PIPELINE_READ),
    ("Note Hook", payloads.note_hook(), NOTE_READ),
]


def mutate(payload: Any, path: Path, value: Any, delete: bool) -> None:
    """Replace (or delete) what `path` points at, if its parent still exists."""
    node = payload
    for key in path[:-1]:
        in_dict = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if not (in_dict or in_list):
            return
        node = node[key]
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            node.pop(last)
        else:
            node[last] = value


@st.composite
def mutated_samples(draw: st.DrawFn) -> tuple[str | None, dict[str, Any]]:
    event, base, read = draw(st.sampled_from(BASES))
    payload = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        # Two draws in three hit a field the router for this payload reads.
        path = draw(
            st.sampled_from(read) | st.sampled_from(read) | st.sampled_from(paths(payload) or read)
        )
        delete = draw(st.booleans())
        mutate(payload, path, None if delete else draw(json_values), delete)
    return event, payload


def truncations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(min_value=0, max_value=len(data) - 1).map(lambda n: data[:n])


SAMPLE_BODIES = [json.dumps(payload).encode() for _, payload, _ in BASES]
bodies = st.binary(max_size=600) | st.sampled_from(SAMPLE_BODIES).flatmap(truncations)


# -- the harness ------------------------------------------------------------------------------


def sign(body: bytes, secret: str = STATUS_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Fuzz:
    """Posts deliveries, checks each answer, and tracks what the bot accepted."""

    bot: Bot
    gitlab: FakeGitLab
    accepted_projects: set[int] = field(default_factory=set)
    answers: collections.Counter[int] = field(default_factory=collections.Counter)
    must_see: set[int] = field(default_factory=set)  # statuses the examples must have produced

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with self.bot.session.post(
            f"{self.bot.url}/webhook", data=body, headers=headers
        ) as resp:
            status, text = resp.status, await resp.text()
        assert status in ALLOWED, (status, text)
        answer = json.loads(text)
        assert isinstance(answer, dict) and ("status" in answer) != ("error" in answer), answer
        if status == 202:
            assert answer["status"] == "queued" and answer["queued"], answer
            for key in answer["queued"]:
                self.accepted_projects.add(int(re.match(r"\d+", key)[0]))  # type: ignore[index]
        elif status == 200:
            assert answer["status"] in ("ignored", "duplicate"), answer
        else:
            assert isinstance(answer["error"], str) and answer["error"], answer
        self.answers[status] += 1
        self.check_gitlab_calls()
        return status, answer

    async def deliver(self, event: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if event is not None:
            headers |= {"X-Gitlab-Event": event, "X-Gitlab-Token": WEBHOOK_SECRET}
        return await self.post(body, headers)

    def check_gitlab_calls(self) -> None:
        """GitLab has only been asked about projects that an accepted delivery named."""
        called = {
            match[1]
            for call in self.gitlab.calls
            if (match := re.search(r"/projects/([^/]+)", call.path))
        }
        assert called <= {str(p) for p in self.accepted_projects}, (called, self.accepted_projects)


async def _fuzz(
    gitlab: FakeGitLab,
    bot: Bot,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Fuzz]:
    gitlab.add_project(1, "acme/app")
    check = gitlab.add_status_check(1, "conventional-title")
    gitlab.add_mr(1, 1, sha=SHA, title="feat: a fine title", source_branch="feature")
    gitlab.reset_calls()
    fuzz = Fuzz(bot, gitlab)
    yield fuzz
    # After every example: still no call about a refused delivery's project, nothing crashed,
    # the process is healthy, and a real delivery is still judged.
    await bot.settle(limit=30)
    fuzz.check_gitlab_calls()
    assert fuzz.must_see <= set(fuzz.answers), fuzz.answers
    # The log event, not the word: Hypothesis draws header values from the code's own string
    # literals, and a header echoed in a log line may be "delivery_unreadable" itself.
    assert '"event": "delivery_unreadable"' not in capsys.readouterr().err
    crashes = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert crashes == []  # aiohttp logs "Error handling request" for every 500
    async with bot.session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200
    gitlab.set_status(1, 1, check["id"], SHA, "failed")
    assert (await bot.deliver(payloads.merge_request_hook(sha=SHA)))[0] == 202
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


@pytest.fixture
async def fuzz(
    gitlab: FakeGitLab,
    bot: Bot,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Fuzz]:
    async for harness in _fuzz(gitlab, bot, capsys, caplog):
        yield harness


@pytest.fixture
async def signed_fuzz(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Fuzz]:
    bot = await start_bot(status_check_secret=STATUS_SECRET)
    async for harness in _fuzz(gitlab, bot, capsys, caplog):
        yield harness


# -- properties -------------------------------------------------------------------------------


@fuzz_settings(150)
@given(event=st.sampled_from([*EVENTS, None]) | header_text, value=json_values)
async def test_arbitrary_json_is_answered_cleanly(
    fuzz: Fuzz, event: str | None, value: Any
) -> None:
    fuzz.must_see = {200, 400}
    status, _ = await fuzz.deliver(event, json.dumps(value).encode())
    assert status in (200, 400)
    if not isinstance(value, dict):
        assert status == 400


@fuzz_settings(400)
@given(sample=mutated_samples())
async def test_mutated_real_samples_are_answered_cleanly(
    fuzz: Fuzz, sample: tuple[str | None, dict[str, Any]]
) -> None:
    fuzz.must_see = {200, 202, 400}
    event, payload = sample
    status, _ = await fuzz.deliver(event, json.dumps(payload).encode())
    assert status in (200, 202, 400)


@fuzz_settings(150)
@given(event=st.sampled_from([*EVENTS, None]), body=bodies)
async def test_arbitrary_bytes_are_answered_cleanly(
    fuzz: Fuzz, event: str | None, body: bytes
) -> None:
    fuzz.must_see = {400}
    status, _ = await fuzz.deliver(event, body)
    assert status in (200, 400)
    if any(sample.startswith(body) for sample in SAMPLE_BODIES):  # truncated or empty
        assert status == 400


@fuzz_settings(200)
@given(
    headers=st.fixed_dictionaries(
        {},
        optional={
            "X-Gitlab-Event": st.sampled_from(EVENTS) | header_text,
            "X-Gitlab-Token": st.just(WEBHOOK_SECRET) | header_text,
            "Idempotency-Key": header_text,
            "X-Gitlab-Webhook-UUID": header_text,
            "X-Gitlab-Event-UUID": header_text,
            "X-Gitlab-Instance": header_text,
            "X-Gitlab-Signature": header_text,
            "Content-Type": header_text,
            "User-Agent": header_text,
        },
    )
)
async def test_arbitrary_header_values_are_answered_cleanly(
    fuzz: Fuzz, headers: dict[str, str]
) -> None:
    fuzz.must_see = {202, 400, 401}
    body = json.dumps(payloads.merge_request_hook(sha=SHA)).encode()
    status, _ = await fuzz.post(body, headers)
    event = headers.get("X-Gitlab-Event")
    if not event:
        assert status == 400  # a status-check request needs external_approval_rule
    elif headers.get("X-Gitlab-Token") != WEBHOOK_SECRET:
        assert status == 401
    elif event == "Merge Request Hook":
        assert status in (200, 202)  # 200: a repeated Idempotency-Key or Webhook-UUID
    else:
        assert status in (200, 202, 400)


@fuzz_settings(200)
@given(
    body=st.one_of(
        mutated_samples()
        .filter(lambda sample: sample[0] is None)
        .map(lambda sample: json.dumps(sample[1]).encode()),
        st.just(SAMPLE_BODIES[2]),
        bodies,
    ),
    signature=st.sampled_from(["right", "RIGHT", " right ", "other secret", "missing"])
    | header_text,
)
async def test_unsigned_or_wrongly_signed_status_checks_are_refused(
    signed_fuzz: Fuzz, body: bytes, signature: str
) -> None:
    signed_fuzz.must_see = {202, 400, 401}
    right = sign(body)
    given_signature = {
        "right": right,
        "RIGHT": right.upper(),
        " right ": f" {right} ",
        "other secret": sign(body, "not-the-secret"),
    }.get(signature, signature)
    headers = {"X-Gitlab-Signature": given_signature} if signature != "missing" else {}
    status, answer = await signed_fuzz.post(body, headers)
    if given_signature.strip().lower() == right:
        assert status in (200, 202, 400), answer
    else:
        assert status == 401, answer

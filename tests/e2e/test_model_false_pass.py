"""A hunt for false passes: a model-based test (hypothesis stateful) that interleaves what happens
to merge requests on a real GitLab with what reaches the bot, and checks two invariants.

Events: pushes (small or 900-line commits, some landing while the bot reads), approvals and
unapprovals, pipelines starting and finishing (plain and merged-results), labels and title edits,
time passing; deliveries sent at once, duplicated, delayed and reordered, or lost.

1. Safety, after every step: GitLab never accepted a `passed` from the bot for a head whose true
   state fails the policy. The truth is computed here, independently of the bot's policy code,
   from the fake GitLab's true state: the pipeline built for the head, the approvals that remain
   once GitLab has run the resets it scheduled, the whole diff, the labels and title.
2. Liveness, when events stop: every check converges to the verdict of the true state (the
   sweep heals lost deliveries; the bot wakes itself for doubts that end with time).

The bot and the fake GitLab run as real servers on an event loop in a background thread; the
state machine drives them from the test thread. A few derandomised examples run in the suite;
`MODEL_EXAMPLES=200 pytest tests/e2e/test_model_false_pass.py` hunts longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bot.config import Settings
from bot.logs import configure_logging
from bot.service.app import create_app
from bot.service.policy_store import PolicyStore
from tests import payloads
from tests.conftest import TOKEN, WEBHOOK_SECRET, settle, write_policies
from tests.fakegitlab import Call, FakeGitLab, diff_file, sha_for

T = TypeVar("T")
PROJECT = 1
USERS = {"carol": 3, "dave": 4}
AUTHOR = {"id": 1, "username": "alice"}
CHECKS = ("pipeline-green", "reviewed", "size-limit", "guard", "ship-it")
POLICIES = {
    "pipeline.yml": "check: pipeline-green\nrequire:\n  - pipeline: success\n",
    "review.yml": "check: reviewed\nrequire:\n  - approvals: {count: 1}\n",
    "size.yml": "check: size-limit\nrequire:\n  - changed_lines: {max: 400}\n",
    "guard.yml": (
        "check: guard\nrequire:\n  - not: {labels: {any: [do-not-merge]}}\n  - title: '^feat'\n"
    ),
    # Doubt inside `any` and `not`: a hotfix label, or a reviewed, green and small change.
    "ship.yml": (
        "check: ship-it\nrequire:\n  - any:\n"
        "      - labels: {any: [hotfix]}\n"
        "      - all:\n"
        "          - pipeline: success\n"
        "          - approvals: {count: 1}\n"
        "          - not: {changed_lines: {min: 401}}\n"
    ),
}
SETTLE = 0.8  # the bot's APPROVAL_SETTLE_SECONDS here; GitLab's reset delay is RESET_DELAY
RESET_DELAY = 0.4


class World:
    """The fake GitLab and the bot, serving on a loop in a thread, for every example."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp = tempfile.TemporaryDirectory()
        self.gitlab = FakeGitLab(token=TOKEN)
        self.gitlab.approval_reset_delay = RESET_DELAY
        self.iids = itertools.count(1)
        self.violations: list[str] = []
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the loop's thread: the fake's state is only touched there."""

        async def go() -> T:
            return fn(*args, **kwargs)

        return self.run(go())

    async def _start(self) -> None:
        configure_logging(fmt="json", level="error", secrets=[TOKEN, WEBHOOK_SECRET])
        await self.gitlab.start()
        self.gitlab.add_project(PROJECT, "acme/app")
        for check in CHECKS:
            self.gitlab.add_status_check(PROJECT, check)
        self.gitlab.on_request("POST", "/status_check_responses", self._audit_post)
        root = Path(self.tmp.name)
        settings = Settings(
            gitlab_url=self.gitlab.url,
            gitlab_token=TOKEN,
            webhook_secret=WEBHOOK_SECRET,
            policy_dir=write_policies(root / "policies", POLICIES),
            state_dir=root / "state",
            workers=4,
            gitlab_timeout=5.0,
            handle_signals=False,
            policy_poll_interval=60.0,
            shutdown_deadline=2.0,
            projects=("acme/app",),
            reconcile_interval=1.0,
            sweep_budget=500.0,
            evaluation_spacing=0.05,
        )
        settings = replace(settings, approval_settle_seconds=SETTLE)
        store = PolicyStore(settings.policy_dir)
        store.load()
        self.app = create_app(settings, store)
        self.server = TestServer(self.app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession()
        self.url = str(self.server.make_url("/webhook"))

    async def close(self) -> None:
        await self.session.close()
        await self.server.close()
        await self.gitlab.close()

    def _audit_post(self, call: Call) -> None:
        """Before GitLab accepts a status: a `passed` for the head must be the truth."""
        body = call.json or {}
        if body.get("status") != "passed":
            return
        iid = int(call.path.rstrip("/").split("/merge_requests/")[1].split("/")[0])
        mr = self.gitlab.mr(PROJECT, iid)
        if body.get("sha") != mr["sha"]:
            return  # GitLab answers 409: nothing is shown
        check = next(
            c["name"]
            for c in self.gitlab.projects[PROJECT].checks.values()
            if int(c["id"]) == int(body["external_status_check_id"])
        )
        truth = true_verdicts(self.gitlab, iid)
        if not truth[check]:
            self.violations.append(f"!{iid} {check}: passed posted for {mr['sha'][:8]}, {truth}")

    async def deliver(self, payload: dict[str, Any], event: str) -> None:
        headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": WEBHOOK_SECRET}
        async with self.session.post(self.url, json=payload, headers=headers) as response:
            assert response.status in (200, 202), await response.text()

    async def settle(self, limit: float = 10.0) -> None:
        await settle(self.app, limit)


def true_verdicts(gitlab: FakeGitLab, iid: int) -> dict[str, bool]:
    """Each check's verdict on the true state of the MR, computed without the bot's code."""
    project = gitlab.projects[PROJECT]
    mr = project.mrs[iid]
    head = mr.data["sha"]
    built_for_head = [p for p in mr.pipelines if head in (p["sha"], p["_source_sha"])]
    built_for_head.sort(key=lambda p: (p["source"] != "merge_request_event", -p["id"]))
    green = bool(built_for_head) and built_for_head[0]["status"] == "success"
    approvers = [
        a for a in gitlab.true_approvers(PROJECT, iid) if a != mr.data["author"]["username"]
    ]
    lines = sum(
        1
        for entry in mr.diffs
        for line in str(entry.get("diff") or "").splitlines()
        if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    )
    labels = set(mr.data["labels"])
    return {
        "pipeline-green": green,
        "reviewed": len(approvers) >= 1,
        "size-limit": lines <= 400,
        "guard": "do-not-merge" not in labels and bool(re.match("^feat", mr.data["title"])),
        "ship-it": "hotfix" in labels or (green and len(approvers) >= 1 and lines <= 400),
    }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    built = World()
    yield built
    built.run(built.close())
    built.loop.call_soon_threadsafe(built.loop.stop)
    built.thread.join(5)
    built.tmp.cleanup()


DELIVERY = st.sampled_from(["now", "now", "twice", "later", "lost"])


class FalsePassHunt(RuleBasedStateMachine):
    world: World

    def __init__(self) -> None:
        super().__init__()
        world = self.world
        world.violations.clear()  # each example is judged on its own
        self.iid = next(world.iids)
        self.pushes = itertools.count(1)
        self.later: list[tuple[dict[str, Any], str]] = []
        sha = sha_for(f"mr{self.iid}/0")
        world.call(
            world.gitlab.add_mr,
            PROJECT,
            self.iid,
            sha=sha,
            title="feat: a change",
            author=AUTHOR,
            source_branch=f"feature-{self.iid}",
            diffs=[diff_file("src/app.py", additions=10)],
            pipeline="success",
        )
        self._send({"kind": "mr", "sha": sha}, "now")

    # -- what reaches the bot ----------------------------------------------------------------

    def _payload(self, what: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if what["kind"] == "pipeline":
            return payloads.pipeline_hook(iid=self.iid, sha=what["sha"]), "Pipeline Hook"
        hook = payloads.merge_request_hook(
            iid=self.iid, sha=what["sha"], source_branch=f"feature-{self.iid}"
        )
        return hook, "Merge Request Hook"

    def _send(self, what: dict[str, Any], how: str) -> None:
        payload, event = self._payload(what)
        if how == "lost":
            return
        if how == "later":
            self.later.append((payload, event))
            return
        for _ in range(2 if how == "twice" else 1):
            self.world.run(self.world.deliver(payload, event))
        self.world.run(self.world.settle())

    def _head(self) -> str:
        return str(self.world.call(self.world.gitlab.mr, PROJECT, self.iid)["sha"])

    # -- what happens on GitLab --------------------------------------------------------------

    @rule(big=st.booleans(), how=DELIVERY, with_pipeline=st.booleans())
    def push(self, big: bool, how: str, with_pipeline: bool) -> None:
        sha = sha_for(f"mr{self.iid}/{next(self.pushes)}")
        diffs = [diff_file("src/app.py", additions=900 if big else 10)]
        pipeline = "running" if with_pipeline else None
        self.world.call(
            self.world.gitlab.push, PROJECT, self.iid, sha, diffs=diffs, pipeline=pipeline
        )
        self._send({"kind": "mr", "sha": sha}, how)

    @rule(big=st.booleans())
    def push_while_the_bot_reads(self, big: bool) -> None:
        """A push lands between the bot's first read of a fact and its read of the MR."""
        world, gitlab = self.world, self.world.gitlab
        old = self._head()
        sha = sha_for(f"mr{self.iid}/{next(self.pushes)}")
        diffs = [diff_file("src/app.py", additions=900 if big else 10)]
        slowed: list[Call] = []

        def push_now(call: Call) -> None:
            if not slowed and call.path.split("?")[0].endswith(("/diffs", "/approvals")):
                slowed.append(call)
                gitlab.push(PROJECT, self.iid, sha, diffs=diffs)

        world.call(gitlab.on_request, "GET", f"/merge_requests/{self.iid}/", push_now, when="after")
        self._send({"kind": "mr", "sha": old}, "now")
        world.call(gitlab.clear_watchers, "GET", f"/merge_requests/{self.iid}/")
        self._send({"kind": "mr", "sha": self._head()}, "now")

    @rule(user=st.sampled_from(sorted(USERS)), how=DELIVERY)
    def approve(self, user: str, how: str) -> None:
        self.world.call(
            self.world.gitlab.approve, PROJECT, self.iid, {"id": USERS[user], "username": user}
        )
        self._send({"kind": "mr", "sha": self._head()}, how)

    @rule(user=st.sampled_from(sorted(USERS)), how=DELIVERY)
    def unapprove(self, user: str, how: str) -> None:
        self.world.call(self.world.gitlab.unapprove, PROJECT, self.iid, {"id": USERS[user]})
        self._send({"kind": "mr", "sha": self._head()}, how)

    @rule(
        status=st.sampled_from(["success", "success", "failed", "running"]),
        merged_results=st.booleans(),
        how=DELIVERY,
    )
    def pipeline(self, status: str, merged_results: bool, how: str) -> None:
        self.world.call(
            self.world.gitlab.set_pipeline,
            PROJECT,
            self.iid,
            status,
            merged_results=merged_results,
        )
        self._send({"kind": "pipeline", "sha": self._head()}, how)

    @rule(label=st.sampled_from(["do-not-merge", "hotfix"]), add=st.booleans(), how=DELIVERY)
    def label(self, label: str, add: bool, how: str) -> None:
        labels = set(self.world.call(self.world.gitlab.mr, PROJECT, self.iid)["labels"])
        labels = labels | {label} if add else labels - {label}
        self.world.call(self.world.gitlab.update_mr, PROJECT, self.iid, labels=sorted(labels))
        self._send({"kind": "mr", "sha": self._head()}, how)

    @rule(good=st.booleans(), how=DELIVERY)
    def retitle(self, good: bool, how: str) -> None:
        title = "feat: a change" if good else "Update stuff"
        self.world.call(self.world.gitlab.update_mr, PROJECT, self.iid, title=title)
        self._send({"kind": "mr", "sha": self._head()}, how)

    @rule(seconds=st.sampled_from([0.1, 0.5]))
    def time_passes(self, seconds: float) -> None:
        """Real time passes (GitLab's approval resets and the bot's self-wakes are timers)."""
        time.sleep(seconds)
        self.world.run(self.world.settle())

    @precondition(lambda self: bool(self.later))
    @rule(reverse=st.booleans())
    def delayed_deliveries_arrive(self, reverse: bool) -> None:
        pending, self.later = self.later, []
        for payload, event in reversed(pending) if reverse else pending:
            self.world.run(self.world.deliver(payload, event))
        self.world.run(self.world.settle())

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def gitlab_never_accepted_a_false_pass(self) -> None:
        assert not self.world.violations, self.world.violations

    def teardown(self) -> None:
        """Events stop: every check converges to the true verdict (lost deliveries included)."""
        world = self.world
        try:
            deadline = time.monotonic() + 8.0
            while True:
                shown = world.call(world.gitlab.statuses, PROJECT, self.iid)
                truth = world.call(true_verdicts, world.gitlab, self.iid)
                expected = {c: "passed" if truth[c] else "failed" for c in CHECKS}
                if {c: shown[c] for c in CHECKS} == expected:
                    break
                assert time.monotonic() < deadline, f"!{self.iid}: {shown} != {expected}"
                time.sleep(0.1)
            assert not world.violations, world.violations
        finally:
            with contextlib.suppress(Exception):
                world.call(world.gitlab.update_mr, PROJECT, self.iid, state="closed")


def test_no_false_pass_and_every_check_converges(world: World) -> None:
    FalsePassHunt.world = world
    examples = int(os.environ.get("MODEL_EXAMPLES", "6"))
    hunt = FalsePassHunt.TestCase
    hunt.settings = settings(
        max_examples=examples,
        stateful_step_count=int(os.environ.get("MODEL_STEPS", "12")),
        derandomize=examples <= 20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    hunt("runTest").runTest()

"""The README's "Try it in a minute": `python -m tests.fakegitlab --demo` in its own process and
the real bot with the shipped policies (policies/), swept at start-up as with PROJECTS=acme/app.
The README relies on what each seeded MR shows: !1 passes every check, !2 fails every check with
a fix for each, !3 waits for its running pipeline."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from bot.service.app import RECORD, SWEEPER
from tests.conftest import eventually
from tests.fakegitlab.standalone import DEMO_CHECKS
from tests.processes import REPO, SHIPPED, clean_env, http, standalone_fake

ALL_PASS = dict.fromkeys(DEMO_CHECKS, "passed")


def fixes(outcome: dict[str, Any] | None) -> Iterator[str]:
    """Every fix offered anywhere in an outcome tree."""
    if outcome:
        if outcome.get("fix"):
            yield outcome["fix"]
        for child in outcome.get("children") or ():
            yield from fixes(child)


async def test_the_demo_shows_a_pass_a_failure_with_fixes_and_a_wait(
    start_bot: Callable[..., Any],
) -> None:
    with standalone_fake("--demo", "--bot-url", "http://127.0.0.1:8080/webhook") as url:

        def shown(iid: int) -> dict[str, str]:
            return http("GET", f"{url}/_fake/statuses/1/{iid}")[1]

        assert shown(1) == shown(2) == shown(3) == dict.fromkeys(DEMO_CHECKS, "pending")
        bot = await start_bot(
            gitlab_url=url, policy_dir=SHIPPED, projects=("acme/app",), sweep_budget=1000
        )
        await eventually(lambda: bot.app[SWEEPER].sweeps >= 1)
        assert shown(1) == ALL_PASS
        assert shown(2) == dict.fromkeys(DEMO_CHECKS, "failed")
        assert shown(3) == {**ALL_PASS, "pipeline-green": "failed"}

        record = bot.app[RECORD]
        await record.flush()
        rows = {iid: {r["check"]: r for r in await record.latest(1, iid)} for iid in (1, 2, 3)}
        assert not rows[1]["security-review"]["applicable"]  # nothing under auth/ changed
        failing = rows[2]
        for check, says in {
            "conventional-title": 'title: "Update stuff" does not match',
            "security-review": "approvals: 0 of 1 from acme/security",
            "size-limit": "changed_lines: 900 > max 400",
            "pipeline-green": "the pipeline is failed",
            "docs-or-approval": "approvals: 0 of 1",
        }.items():
            assert says in failing[check]["reason"], failing[check]["reason"]
            assert list(fixes(failing[check]["outcome"])), f"{check} offers no fix"
        waiting = rows[3]["pipeline-green"]
        assert "waiting for pipeline (running)" in waiting["reason"]
        assert "wait for the pipeline to finish" in " ".join(fixes(waiting["outcome"]))
        assert not rows[3]["security-review"]["applicable"]


def test_the_demo_seeds_its_own_project_only() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fakegitlab", "--demo", "--seed-mrs", "3"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "--demo seeds its own project" in done.stderr

"""decide.py on its own: which verdicts are posted (`status_shown`, `action_for`), what GitLab's
answers reveal about its version (`reports_failures`), and one `Evaluator` driving a real GitLab
client against the fake GitLab over HTTP, with no queue and no server around it: what it posts,
what it leaves alone, and when it asks to be called again.

(tests/e2e/ runs the same evaluator inside the bot; these tests call it directly.)"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.gitlab.client import GitLab
from bot.gitlab.snapshot import StatusCheck
from bot.keys import BranchKey, Hint, MRKey
from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome, Verdict
from bot.service.decide import Decision, Evaluator, action_for, reports_failures, status_shown
from bot.service.policy_store import PolicyStore
from tests.builders import running_pipeline, seed_mr
from tests.conftest import TOKEN, write_policies
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
PUSHED = "2" * 40
KEY = MRKey(1, 1)
REPORTS = (True, False, None)  # reports_failures: yes (15.0+), no (14.x), not known yet
CHECKS = ("conventional-title", "pipeline-green", "someone-elses-check")


def verdict(status: str) -> Verdict:
    return Verdict(
        check="c",
        status=status,  # type: ignore[arg-type]
        reason="r",
        outcome=Outcome(rule="r", passed=status == "passed", evidence="e"),
    )


# -- which verdicts are posted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict_status", "shown", "expected"),
    [
        ("passed", "passed", True),
        ("passed", "approved", True),  # GitLab 14.x shows a passed check as approved
        ("passed", "failed", False),
        ("passed", "pending", False),
        ("failed", "failed", True),
        ("failed", "passed", False),
        ("failed", "approved", False),
        ("failed", "pending", False),
    ],
)
def test_status_shown(verdict_status: str, shown: str, expected: bool) -> None:
    assert status_shown(verdict(verdict_status), shown) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdict_status", "shown", "reports", "expected"),
    [
        # What GitLab shows already is never posted again, whatever the version.
        *[("passed", s, r, "unchanged") for s in ("passed", "approved") for r in REPORTS],
        *[("failed", "failed", r, "unchanged") for r in REPORTS],
        # A pass can always be shown.
        *[("passed", s, r, "posted") for s in ("failed", "pending") for r in REPORTS],
        # A failure: posted where GitLab takes it; 14.x cannot show it; unknown version: wait.
        *[("failed", s, True, "posted") for s in ("passed", "approved", "pending")],
        *[("failed", s, False, "not_reportable") for s in ("passed", "approved", "pending")],
        *[("failed", s, None, "deferred") for s in ("passed", "approved", "pending")],
    ],
)
def test_action_for(verdict_status: str, shown: str, reports: bool | None, expected: str) -> None:
    assert action_for(verdict(verdict_status), shown, reports) == expected  # type: ignore[arg-type]


# -- what GitLab's answers reveal --------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def client_for(gitlab: FakeGitLab, session: aiohttp.ClientSession) -> GitLab:
    """A real GitLab client, one attempt per request (a test sees every failure at once)."""
    return GitLab(session, url=gitlab.url, token=TOKEN, timeout=2.0, max_attempts=1)


def listed(*statuses: str) -> list[StatusCheck]:
    return [StatusCheck(id=n, name=f"c{n}", status=s) for n, s in enumerate(statuses)]  # type: ignore[arg-type]


async def test_reports_failures_learns_from_gitlabs_answers_and_keeps_it(
    gitlab: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gitlab.version = "15.3.0"  # before detailed_merge_status: the MR itself tells nothing
    seed_mr(gitlab)
    client = client_for(gitlab, session)
    mr = await client.merge_request(1, 1)
    assert "detailed_merge_status" not in mr
    assert reports_failures(client, listed("pending"), mr) is None
    assert client.known_reports_failures is None
    assert reports_failures(client, listed("pending", "failed"), mr) is True
    # Kept for every later evaluation, whose answers may tell nothing.
    assert reports_failures(client, listed("pending"), None) is True
    assert client.known_reports_failures is True


async def test_an_approved_check_reveals_gitlab_14_and_a_current_mr_reveals_15_6(
    gitlab: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    seed_mr(gitlab)
    old = client_for(gitlab, session)
    assert reports_failures(old, listed("pending", "approved"), None) is False
    assert reports_failures(old, listed("pending"), None) is False
    current = client_for(gitlab, session)
    mr = await current.merge_request(1, 1)  # GitLab 18.9: the MR shows detailed_merge_status
    assert reports_failures(current, listed("pending"), mr) is True


async def test_a_detected_version_wins_over_what_answers_seem_to_say(
    gitlab: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gitlab.version = "14.5.0"
    client = client_for(gitlab, session)
    assert await client.detect_version() is not None
    assert reports_failures(client, listed("failed"), {"detailed_merge_status": "x"}) is False
    assert client.learned_reports_failures is None  # nothing learned once the version is known


# -- the evaluator against the fake GitLab -----------------------------------------------------


@dataclass
class Run:
    """One Evaluator and what it told its listeners and its queue."""

    evaluator: Evaluator
    gitlab: GitLab
    decisions: list[Decision] = field(default_factory=list)
    evaluations: list[tuple[MRKey, MergeRequestFacts, list[Decision]]] = field(default_factory=list)
    submitted: list[tuple[MRKey, Hint]] = field(default_factory=list)

    def actions(self) -> dict[str, tuple[str, str]]:
        """{check: (verdict, action)} of the decisions since the last call."""
        taken = {d.check: (d.verdict.status, d.action) for d in self.decisions}
        self.decisions.clear()
        return taken


@pytest.fixture
async def start(
    gitlab: FakeGitLab, session: aiohttp.ClientSession, policy_dir: Path
) -> Callable[..., Awaitable[Run]]:
    async def start(
        last_posted: Callable[[MRKey, str], Awaitable[tuple[str, str] | None]] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> Run:
        client = client_for(gitlab, session)
        assert await client.detect_version() is not None
        store = PolicyStore(policy_dir)
        store.load()
        submitted: list[tuple[MRKey, Hint]] = []
        options: dict[str, Any] = {"last_posted": last_posted}
        if clock is not None:
            options["clock"] = clock
        evaluator = Evaluator(
            client,
            lambda: store.current,
            submit=lambda key, hint: submitted.append((key, hint)),
            **options,
        )
        run = Run(evaluator, client, submitted=submitted)
        run.evaluator.listeners.append(run.decisions.append)
        run.evaluator.evaluation_listeners.append(
            lambda key, facts, decisions: run.evaluations.append((key, facts, decisions))
        )
        return run

    return start


def events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The bot's log lines (JSON on stderr) since the last call."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]


def posted(gitlab: FakeGitLab) -> list[tuple[int, str, str]]:
    return [
        (c.json["external_status_check_id"], c.json["sha"], c.json["status"])
        for c in gitlab.status_posts()
    ]


async def test_only_what_gitlab_does_not_show_yet_is_posted(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    seed_mr(gitlab, CHECKS, sha=SHA, head_pipeline=running_pipeline(SHA))
    title_check, pipeline_check, _ = (c["id"] for c in gitlab.projects[1].checks.values())
    gitlab.set_status(1, 1, title_check, SHA, "passed")  # shown already
    run = await start()
    assert await run.evaluator.evaluate(KEY, Hint(trigger="test")) is None
    assert run.actions() == {
        "conventional-title": ("passed", "unchanged"),
        "pipeline-green": ("failed", "posted"),
    }
    assert posted(gitlab) == [(pipeline_check, SHA, "failed")]  # nothing for someone else's
    assert gitlab.statuses(1, 1)["someone-elses-check"] == "pending"
    [(key, facts, decisions)] = run.evaluations
    assert (key, facts.sha, len(decisions)) == (KEY, SHA, 2)

    gitlab.reset_calls()  # GitLab shows both now: a second look posts nothing
    assert await run.evaluator.evaluate(KEY, Hint(trigger="test")) is None
    assert set(run.actions().values()) == {("passed", "unchanged"), ("failed", "unchanged")}
    assert posted(gitlab) == []


async def test_a_merge_request_that_is_not_open_is_not_judged(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]], capsys: pytest.CaptureFixture[str]
) -> None:
    seed_mr(gitlab, CHECKS, sha=SHA, state="merged")
    run = await start()
    capsys.readouterr()
    assert await run.evaluator.evaluate(KEY) is None
    assert (run.decisions, run.evaluations, posted(gitlab)) == ([], [], [])
    [skipped] = [e for e in events(capsys) if e["event"] in ("skipped", "no_matching_checks")]
    assert (skipped["event"], skipped["reason"]) == ("skipped", "merge request is merged")


async def test_a_passed_the_bot_never_posted_is_overwritten_as_tampering(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    seed_mr(gitlab, CHECKS, sha=SHA, title="Add login")
    title_check = next(iter(gitlab.projects[1].checks))
    gitlab.set_status(1, 1, title_check, SHA, "passed")  # someone set it through the API
    run = await start()
    await run.evaluator.evaluate(KEY)
    [title] = [d for d in run.decisions if d.check == "conventional-title"]
    assert (title.gitlab_status, title.action, title.tampered) == ("passed", "posted", True)
    assert gitlab.check_status(1, 1, "conventional-title") == "failed"


async def test_what_the_record_says_was_posted_before_a_restart_is_no_tampering(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    """The bot passed the title before it restarted; the title was changed since."""
    seed_mr(gitlab, CHECKS, sha=SHA, title="Add login")
    title_check = next(iter(gitlab.projects[1].checks))
    gitlab.set_status(1, 1, title_check, SHA, "passed")
    asked: list[tuple[MRKey, str]] = []

    async def last_posted(key: MRKey, check: str) -> tuple[str, str] | None:
        asked.append((key, check))
        return (SHA, "passed") if check == "conventional-title" else None

    run = await start(last_posted=last_posted)
    await run.evaluator.evaluate(KEY)
    [title] = [d for d in run.decisions if d.check == "conventional-title"]
    assert (title.action, title.tampered) == ("posted", False)
    assert (KEY, "conventional-title") in asked


async def test_with_a_shared_record_the_record_is_asked_before_this_process_memory(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    """A fleet (DATABASE_URL): this process passed the title, another replica failed it since,
    as the shared record says, so GitLab's `failed` is no tampering. When the record cannot be
    read, this process's memory decides, as in one process."""
    seed_mr(gitlab, CHECKS, sha=SHA, title="feat: login")
    title_check = next(iter(gitlab.projects[1].checks))
    record: dict[str, tuple[str, str] | None] = {"conventional-title": None}
    readable = True

    async def last_posted(key: MRKey, check: str) -> tuple[str, str] | None:
        if not readable:
            raise OSError("PostgreSQL is away")
        return record.get(check)

    run = await start(last_posted=last_posted)
    run.evaluator.shared_record = True
    await run.evaluator.evaluate(KEY)  # this process posts `passed`
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    gitlab.set_status(1, 1, title_check, SHA, "failed")  # another replica, on another title
    record["conventional-title"] = (SHA, "failed")
    await run.evaluator.evaluate(KEY)
    title = [d for d in run.decisions if d.check == "conventional-title"][-1]
    assert (title.gitlab_status, title.action, title.tampered) == ("failed", "posted", False)
    gitlab.set_status(1, 1, title_check, SHA, "failed")  # by hand, while the record is away
    readable = False
    await run.evaluator.evaluate(KEY)
    title = [d for d in run.decisions if d.check == "conventional-title"][-1]
    assert (title.gitlab_status, title.action, title.tampered) == ("failed", "posted", True)


async def test_a_head_that_moves_before_the_post_lands_is_looked_at_again_then_backed_off(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    seed_mr(gitlab, CHECKS, sha=SHA, head_pipeline=running_pipeline(SHA))
    heads = iter(f"{n:040x}" for n in range(100, 200))

    def push_on_post() -> None:
        gitlab.on_request(
            "POST",
            "status_check_responses",
            lambda call: gitlab.push(1, 1, next(heads)),
            times=1,
        )

    run = await start()
    push_on_post()
    assert await run.evaluator.evaluate(KEY) == 0.0  # at once, the first time
    assert {action for _, action in run.actions().values()} == {"stale"}
    assert [c.status for c in gitlab.calls_to("POST", "status_check_responses")] == [409, 409]
    push_on_post()
    assert await run.evaluator.evaluate(KEY) == 0.5  # again: backing off
    push_on_post()
    assert await run.evaluator.evaluate(KEY) == 1.0
    # The head holds still: judged for the head GitLab has now, and the backoff is forgotten.
    head = gitlab.mr(1, 1)["sha"]
    assert await run.evaluator.evaluate(KEY) is None
    assert {sha for _, sha, _ in posted(gitlab)} == {head}
    gitlab.push(1, 1, next(heads))  # a new commit: there is something to post again...
    push_on_post()  # ...and the head moves under that post too
    assert await run.evaluator.evaluate(KEY) == 0.0


async def test_gitlab_trouble_is_looked_at_again_later_and_a_refusal_is_not(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]], capsys: pytest.CaptureFixture[str]
) -> None:
    seed_mr(gitlab, CHECKS, sha=SHA)
    run = await start()
    base = run.evaluator.retry_base
    gitlab.fail(503, times=1, path_contains="/status_checks")
    first = await run.evaluator(KEY, None)
    gitlab.fail(503, times=1, path_contains="/status_checks")
    second = await run.evaluator(KEY, None)
    assert first is not None and 0.8 * base <= first <= 1.2 * base
    assert second is not None and 1.6 * base <= second <= 2.4 * base  # doubling
    assert await run.evaluator(KEY, None) is None  # GitLab answers: judged, nothing to wait for
    gitlab.fail(503, times=1, path_contains="/status_checks")
    again = await run.evaluator(KEY, None)
    assert again is not None and again <= 1.2 * base  # the doubling starts over

    capsys.readouterr()
    for _ in range(3):
        assert await run.evaluator(MRKey(1, 99), None) is None  # 404: retrying cannot help
    refused = [e for e in events(capsys) if e["event"] == "gitlab_refused"]
    assert [(e["level"], e["key"]) for e in refused if e["level"] == "error"] == [("error", "1!99")]


async def test_a_pipeline_delivery_queues_every_open_mr_of_its_branch(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]]
) -> None:
    seed_mr(gitlab, CHECKS, iid=1, sha=SHA, source_branch="feature")
    seed_mr(gitlab, iid=2, sha=SHA, source_branch="feature", target_branch="release/1")
    seed_mr(gitlab, iid=3, sha=PUSHED, source_branch="other")
    seed_mr(gitlab, iid=4, sha=SHA, source_branch="feature", state="closed")
    run = await start()
    hint = Hint(trigger="Pipeline Hook")
    assert await run.evaluator(BranchKey(1, "feature"), hint) is None
    assert sorted(run.submitted, key=lambda s: s[0].iid) == [
        (MRKey(1, 1), hint),
        (MRKey(1, 2), hint),
    ]
    assert run.decisions == []  # resolving a branch judges nothing itself


async def test_a_verdict_that_changes_with_time_asks_to_be_looked_at_when_it_does(
    gitlab: FakeGitLab, start: Callable[..., Awaitable[Run]], policy_dir: Path
) -> None:
    write_policies(
        policy_dir,
        {
            "freeze.yml": """
                check: change-freeze
                require:
                  - freeze:
                      timezone: UTC
                      windows:
                        - {name: release, from: "2026-01-01 00:00", to: "2026-01-01 12:00"}
            """
        },
    )
    seed_mr(gitlab, ("change-freeze",), sha=SHA)
    now = dt.datetime(2026, 1, 1, 11, 0, tzinfo=dt.UTC)
    run = await start(clock=lambda: now)
    # Frozen until 12:00: failed now, and looked at again a second after the window ends.
    assert await run.evaluator.evaluate(KEY) == 3601.0
    assert run.actions() == {"change-freeze": ("failed", "posted")}

"""How the decision record writes: an unchanged verdict only refreshes its `latest` row's time and
trigger, anything else rewrites the row, and decisions that arrive close together share one
commit without delaying a read. Real SQLite in tmp_path; statements seen through SQLite's trace."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.keys import MRKey
from bot.policy.model import Outcome, Verdict
from bot.service import record as record_module
from bot.service.decide import Decision
from bot.service.record import DB_NAME, DecisionRecord
from tests import builders
from tests.builders import shipped

SHA = "3" * 40
T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
CAROL = "approved by carol"


def decision(policy_dir: Path, *, evidence: str = CAROL, **changes: Any) -> Decision:
    """conventional-title passed on acme/app!7, GitLab already showing it, unless `changes`."""
    policy = shipped(policy_dir, "conventional-title")
    verdict = Verdict(
        check=policy.check,
        status="passed",
        reason="all rules hold",
        outcome=Outcome(rule="approvals", passed=True, evidence=evidence),
    )
    fields: dict[str, Any] = {
        "key": MRKey(1, 7),
        "sha": SHA,
        "check_id": 7,
        "gitlab_status": "passed",
        "trigger": "Merge Request Hook:update",
        "at": T0,
    }
    return builders.decision(policy, verdict=verdict, **{**fields, **changes})


@pytest.fixture
async def record(tmp_path: Path) -> AsyncIterator[DecisionRecord]:
    opened = DecisionRecord.open(tmp_path / "state")
    yield opened
    await opened.close()


def traced(record: DecisionRecord) -> list[str]:
    statements: list[str] = []
    record._writer.set_trace_callback(statements.append)  # type: ignore[union-attr]
    return statements


async def only_latest(record: DecisionRecord) -> dict[str, object]:
    (row,) = await record.latest(1, 7)
    return row


async def test_an_unchanged_verdict_refreshes_time_and_trigger_only(
    record: DecisionRecord, policy_dir: Path
) -> None:
    await record.record(decision(policy_dir))
    unchanged = decision(policy_dir, action="unchanged", trigger="sweep", at=T0 + dt.timedelta(1))
    await record.record(unchanged)  # the action changed: the row is written whole
    await record.flush()
    statements = traced(record)
    later = T0 + dt.timedelta(days=2)
    await record.record(replace(unchanged, trigger="pipeline:success", at=later))
    row = await only_latest(record)

    writes = [s for s in statements if s.startswith(("INSERT", "UPDATE"))]
    assert len(writes) == 1 and writes[0].startswith("UPDATE latest SET at = "), writes
    assert row["at"] == later.isoformat(timespec="seconds")
    assert (row["trigger"], row["action"]) == ("pipeline:success", "unchanged")
    assert (row["sha"], row["verdict"], row["reason"]) == (SHA, "passed", "all rules hold")
    assert row["outcome"] == {"rule": "approvals", "passed": True, "evidence": CAROL}
    assert len(await record.history(1, 7)) == 1  # only the posted one


async def test_new_evidence_under_the_same_reason_rewrites_the_row(
    record: DecisionRecord, policy_dir: Path
) -> None:
    await record.record(decision(policy_dir, action="unchanged"))
    await record.record(decision(policy_dir, action="unchanged", evidence=f"{CAROL}, dave"))
    row = await only_latest(record)
    assert row["outcome"]["evidence"] == f"{CAROL}, dave"  # type: ignore[index]


@pytest.mark.parametrize(
    "change",
    [
        {"sha": "4" * 40},
        {"gitlab_status": "failed"},
        {"check_id": 8},
        {"project_path": "acme/renamed"},
        {"tampered": True},
    ],
)
async def test_any_other_difference_rewrites_the_row(
    record: DecisionRecord, policy_dir: Path, change: dict[str, object]
) -> None:
    await record.record(decision(policy_dir, action="unchanged"))
    await record.record(decision(policy_dir, action="unchanged", **change))
    row = await only_latest(record)
    for key, value in change.items():
        assert row[key] == value


async def test_a_row_deleted_behind_the_writers_back_is_written_again(
    record: DecisionRecord, policy_dir: Path, tmp_path: Path
) -> None:
    await record.record(decision(policy_dir, action="unchanged"))
    await record.flush()
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as conn:  # as pruning would
        conn.execute("DELETE FROM latest")
    await record.record(decision(policy_dir, action="unchanged", at=T0 + dt.timedelta(1)))
    row = await only_latest(record)
    assert row["at"] == (T0 + dt.timedelta(1)).isoformat(timespec="seconds")
    assert row["outcome"]["evidence"] == CAROL  # type: ignore[index]


async def test_decisions_arriving_close_together_share_a_commit(
    record: DecisionRecord, policy_dir: Path
) -> None:
    statements = traced(record)
    for iid in range(10):
        # Not posted verdicts: those are committed at once (see the next tests).
        await record.record(decision(policy_dir, action="not_reportable", key=MRKey(1, 100 + iid)))
        await asyncio.sleep(0.005)  # well inside LINGER
    await record.flush()
    assert len(await record.history(1, 105)) == 1
    commits = statements.count("COMMIT")
    assert 1 <= commits <= 5, statements


async def test_a_read_does_not_wait_for_the_linger(
    record: DecisionRecord, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_module, "LINGER", 30.0)
    await record.record(decision(policy_dir))
    started = time.monotonic()
    assert [r["action"] for r in await record.history(1, 7)] == ["posted"]
    assert time.monotonic() - started < 10


async def test_a_project_to_remember_is_committed_without_lingering(
    record: DecisionRecord, policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project is remembered before any evaluation so that a kill -9 right after the delivery
    still leaves it to the next start-up sweep: decisions waiting to be batched must not hold it."""
    monkeypatch.setattr(record_module, "LINGER", 30.0)
    await record.record(decision(policy_dir))
    record.remember_project(1, "acme/app")
    path = tmp_path / "state" / DB_NAME
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(path) as conn:  # another connection: sees committed rows only
            if conn.execute("SELECT count(*) FROM projects").fetchone()[0]:
                break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the project was not committed")


def committed_actions(path: Path) -> list[str]:
    """What another connection (another process after a restart) sees: committed rows only."""
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT action FROM decisions ORDER BY id")]


async def test_a_posted_verdict_is_committed_without_lingering(
    record: DecisionRecord, policy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitLab shows a posted verdict as soon as the POST returns. If the record held it back to
    share a commit, a restart in that window would find a `passed` the bot "never posted" and
    raise a false tamper alarm (issue 9: the flaky restart test)."""
    monkeypatch.setattr(record_module, "LINGER", 30.0)
    await record.record(decision(policy_dir, action="not_reportable", key=MRKey(1, 8)))
    await record.record(decision(policy_dir))  # posted
    path = tmp_path / "state" / DB_NAME
    deadline = time.monotonic() + 10
    while "posted" not in committed_actions(path):
        assert time.monotonic() < deadline, "the posted verdict was not committed"
        await asyncio.sleep(0.02)


async def test_closing_commits_every_queued_write_at_once(
    tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graceful stop loses nothing, and does not wait out the linger either."""
    monkeypatch.setattr(record_module, "LINGER", 30.0)
    record = DecisionRecord.open(tmp_path / "state")
    for iid in range(20):
        await record.record(decision(policy_dir, action="not_reportable", key=MRKey(1, iid)))
    started = time.monotonic()
    await record.close()
    assert time.monotonic() - started < 10
    assert committed_actions(tmp_path / "state" / DB_NAME) == ["not_reportable"] * 20

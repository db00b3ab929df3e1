"""One suite for both decision records: SQLite in STATE_DIR (embedded) and PostgreSQL
(DATABASE_URL). What one stores, the other returns the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.keys import MRKey
from bot.service.database import Database
from bot.service.pgrecord import PgRecord
from bot.service.record import DecisionRecord
from tests.builders import AT, decision, policy_from

POLICY = policy_from("check: title\nrequire:\n  - title: '^feat'\n", "title.yml")


@pytest.fixture(params=["sqlite", "postgres"])
async def record(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        sqlite = DecisionRecord.open(tmp_path / "state")
        yield sqlite
        await sqlite.close()
        return
    db = Database(request.getfixturevalue("database_url"))
    await db.open()
    pg = PgRecord(db)
    await pg.start()
    yield pg
    await pg.close()
    await db.close()


async def test_a_posted_decision_is_in_history_and_latest(record: Any) -> None:
    title = "feat: \x00 hostile \ud800 title"
    await record.record(decision(POLICY, facts={"title": title}, action="posted"))
    history = await record.history(1, 1)
    assert [(h["check"], h["verdict"], h["action"]) for h in history] == [
        ("title", "passed", "posted")
    ]
    assert history[0]["at"] == AT.isoformat(timespec="seconds")
    assert history[0]["outcome"]["passed"] is True
    assert await record.history("ACME/app", 1) == history  # a path, in any case
    latest = await record.latest(1, 1)
    assert [(row["check"], row["sha"]) for row in latest] == [("title", history[0]["sha"])]
    assert await record.last_posted(1, 1, "title") == (history[0]["sha"], "passed")
    assert await record.last_posted(1, 2, "title") is None


async def test_unchanged_verdicts_refresh_latest_without_history_rows(record: Any) -> None:
    await record.record(decision(POLICY, facts={"title": "feat: x"}, action="posted"))
    later = AT + dt.timedelta(minutes=5)
    await record.record(
        decision(POLICY, facts={"title": "feat: x"}, action="unchanged", at=later, trigger="sweep")
    )
    assert len(await record.history(1, 1)) == 1
    (latest,) = await record.latest(1, 1)
    assert (latest["trigger"], latest["at"]) == ("sweep", later.isoformat(timespec="seconds"))


async def test_a_repeated_not_reportable_verdict_keeps_one_history_row(record: Any) -> None:
    for minutes in range(3):
        at = AT + dt.timedelta(minutes=minutes)
        await record.record(
            decision(POLICY, facts={"title": "fix"}, action="not_reportable", at=at)
        )
    assert len(await record.history(1, 1)) == 1


async def test_projects_confirmed_unconfirmed_and_forgotten(record: Any) -> None:
    record.remember_delivered(7)
    record.remember_delivered(8)
    record.remember_project(5, "acme/app")
    record.remember_project(7, "acme/lib")  # confirmed: no longer unconfirmed
    await record.flush()
    assert await record.known_projects() == [(5, "acme/app"), (7, "acme/lib")]
    assert await record.unconfirmed_projects() == [8]
    record.forget_project(5)
    record.drop_unconfirmed(8)
    await record.flush()
    assert await record.known_projects() == [(7, "acme/lib")]
    assert await record.unconfirmed_projects() == []


async def test_history_is_newest_first_and_limited(record: Any) -> None:
    for n in range(5):
        await record.record(
            decision(
                POLICY,
                facts={"title": "feat: x" if n % 2 else "nope"},
                sha=f"{n:040x}",
                key=MRKey(3, 4),
                at=AT + dt.timedelta(seconds=n),
            )
        )
    rows = await record.history(3, 4, limit=3)
    assert [row["sha"][-1] for row in rows] == ["4", "3", "2"]

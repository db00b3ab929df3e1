"""The decision record: real SQLite in tmp_path, the bot as a real server, the fake GitLab."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.keys import MRKey
from bot.policy.facts import MergeRequestFacts
from bot.service.app import RECORD, create_app
from bot.service.decide import Decision
from bot.service.policy_store import PolicyStore
from bot.service.record import DB_NAME, DecisionRecord, StateError
from tests import payloads
from tests.builders import decision, running_pipeline, seed_mr, shipped
from tests.conftest import Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
SHA2 = "2" * 40
ROOT = Path(__file__).resolve().parents[2]


def seed(gitlab: FakeGitLab) -> None:
    """acme/app!1: a conventional title (passes) and a running pipeline (fails)."""
    checks = ("conventional-title", "pipeline-green")
    seed_mr(gitlab, checks, sha=SHA, head_pipeline=running_pipeline(SHA))


async def deliver_and_record(bot: Bot, sha: str = SHA) -> DecisionRecord:
    status, body = await bot.deliver(payloads.merge_request_hook(sha=sha, action="open"))
    assert status == 202, body
    await bot.settle()
    record = bot.app[RECORD]
    await record.flush()
    return record


def failing_leaf(outcome: dict[str, Any]) -> dict[str, Any]:
    while outcome.get("children"):
        outcome = next(c for c in outcome["children"] if not c["passed"])
    return outcome


async def test_a_delivered_mr_is_recorded_with_outcomes_and_evidence(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    record = await deliver_and_record(bot)

    rows = await record.history(1, 1)
    assert sorted((r["check"], r["verdict"], r["action"]) for r in rows) == [
        ("conventional-title", "passed", "posted"),
        ("pipeline-green", "failed", "posted"),
    ]
    failed = next(r for r in rows if r["check"] == "pipeline-green")
    policy = PolicyStore(bot.settings.policy_dir).load().get("pipeline-green")
    assert policy is not None
    assert failed["sha"] == SHA
    assert failed["project_id"] == 1 and failed["project_path"] == "acme/app" and failed["iid"] == 1
    assert failed["policy_path"] == policy.path and failed["policy_digest"] == policy.digest
    assert failed["applicable"] is True and failed["advisory"] is False
    assert failed["trigger"] and failed["gitlab_status"] == "pending"
    assert "running" in failed["reason"]
    leaf = failing_leaf(failed["outcome"])
    assert leaf["passed"] is False and "running" in leaf["evidence"]
    assert dt.datetime.fromisoformat(failed["at"]) > dt.datetime.now(dt.UTC) - dt.timedelta(
        minutes=1
    )
    # By path too, case-insensitively (GitLab paths are).
    assert [r["id"] for r in await record.history("ACME/app", 1)] == [r["id"] for r in rows]
    assert await record.known_projects() == [(1, "acme/app")]

    # An unchanged verdict adds no history row but refreshes the latest verdict.
    before = {r["check"]: r for r in await record.latest(1, 1)}
    await bot.deliver(payloads.merge_request_hook(sha=SHA, action="update"))
    await bot.settle()
    assert len(await record.history(1, 1)) == 2
    latest = {r["check"]: r for r in await record.latest(1, 1)}
    assert set(latest) == {"conventional-title", "pipeline-green"}
    assert latest["pipeline-green"]["action"] == "unchanged"
    assert before["pipeline-green"]["action"] == "posted"
    assert not any(r["tampered"] for r in rows)

    # Someone sets the failing check to passed by hand: the bot overwrites it, and the row says so.
    check_id = next(
        c["id"] for c in gitlab.projects[1].checks.values() if c["name"] == "pipeline-green"
    )
    gitlab.set_status(1, 1, check_id, SHA, "passed")
    await deliver_and_record(bot)
    newest = (await record.history(1, 1, limit=1))[0]
    assert (newest["check"], newest["action"], newest["tampered"]) == (
        "pipeline-green",
        "posted",
        True,
    )


async def test_the_record_survives_a_restart(
    gitlab: FakeGitLab,
    make_settings: Callable[..., Settings],
    start_bot: Callable[..., Any],
) -> None:
    seed(gitlab)
    settings = make_settings()
    store = PolicyStore(settings.policy_dir)
    store.load()
    first = TestServer(create_app(settings, store), host="127.0.0.1")
    await first.start_server()
    async with aiohttp.ClientSession() as session:
        bot = Bot(str(first.make_url("")).rstrip("/"), first.app, session, settings)
        await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
        await bot.settle()
    await first.close()  # closes the record: queued writes are committed
    assert (settings.state_dir / DB_NAME).is_file()

    second = await start_bot()  # a new app on the same STATE_DIR
    record = second.app[RECORD]
    assert record is not first.app[RECORD]
    assert {r["check"] for r in await record.history("acme/app", 1)} == {
        "conventional-title",
        "pipeline-green",
    }
    assert {r["check"] for r in await record.latest(1, 1)} == {
        "conventional-title",
        "pipeline-green",
    }
    assert await record.known_projects() == [(1, "acme/app")]


def test_unusable_state_dirs_are_a_clear_error(tmp_path: Path) -> None:
    # Tests run as root, where file modes do not stop writes: a path under a regular file does.
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(StateError, match=r"^STATE_DIR '.*afile/state' cannot be created: "):
        DecisionRecord.open(tmp_path / "afile" / "state")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / DB_NAME).write_bytes(os.urandom(8192))
    with pytest.raises(StateError, match="is not a usable SQLite database") as caught:
        DecisionRecord.open(corrupt)
    assert "\n" not in str(caught.value)


async def test_the_bot_refuses_to_start_on_an_unusable_state_dir(
    start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(StateError, match="cannot be created"):
        await start_bot(state_dir=tmp_path / "afile" / "state")


@pytest.mark.parametrize("problem", ["not a folder", "corrupt database"])
def test_serve_exits_with_one_line_on_an_unusable_state_dir(tmp_path: Path, problem: str) -> None:
    if problem == "not a folder":
        (tmp_path / "afile").write_text("")
        state_dir = tmp_path / "afile" / "state"
    else:
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        (state_dir / DB_NAME).write_bytes(b"garbage, not SQLite " * 400)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GITLAB_", "STATE_"))},
        "GITLAB_URL": "http://127.0.0.1:9",  # never reached
        "GITLAB_TOKEN": "token-for-a-gitlab-that-is-not-there",
        "STATE_DIR": str(state_dir),
        "POLICY_DIR": str(ROOT / "policies"),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LOG_LEVEL": "error",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and str(state_dir) in lines[0]


async def test_writes_run_on_the_writer_thread_not_the_event_loop(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    record = bot.app[RECORD]
    traced: list[tuple[int, str]] = []

    def trace(statement: str) -> None:
        traced.append((threading.get_ident(), statement))

    record._writer.set_trace_callback(trace)  # type: ignore[union-attr]
    record._reader.set_trace_callback(trace)
    await deliver_and_record(bot)
    await record.history(1, 1)
    loop_thread = threading.get_ident()  # the test, the bot and its event loop share this thread
    writes = [s for _, s in traced if s.startswith("INSERT")]
    assert any("INTO decisions" in s for s in writes)
    assert any("INTO latest" in s for s in writes)
    assert any("INTO projects" in s for s in writes)
    assert any(s.startswith("SELECT") for _, s in traced)
    assert all(thread != loop_thread for thread, _ in traced), traced


def _decision(policy_dir: Path, at: dt.datetime, iid: int) -> Decision:
    facts = MergeRequestFacts(project_id=1, project_path="acme/app", iid=iid, sha=SHA2, title="x")
    policy = shipped(policy_dir, "conventional-title")
    return decision(policy, facts=facts, key=MRKey(1, iid), sha=SHA2, check_id=7, at=at)


async def test_close_flushes_and_old_decisions_are_pruned_at_start(
    tmp_path: Path, policy_dir: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    record = DecisionRecord.open(tmp_path / "state", retention_days=30)
    for _ in range(200):
        await record.record(_decision(policy_dir, now, 1))
    await record.record(_decision(policy_dir, now - dt.timedelta(days=31), 2))
    await record.close()  # no flush: close must commit what is queued
    await record.close()  # and closing twice is harmless

    reopened = DecisionRecord.open(tmp_path / "state", retention_days=30)
    try:
        assert len(await reopened.history(1, 1, limit=1000)) == 200
        assert await reopened.history(1, 2) == []  # older than the retention: pruned
        assert await reopened.latest(1, 2) == []
        row = (await reopened.history(1, 1, limit=1))[0]
        assert row["reason"] and row["outcome"]["passed"] is False
    finally:
        await reopened.close()
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_record_from_an_older_bot_gains_the_new_columns(
    tmp_path: Path, policy_dir: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / DB_NAME) as conn:  # the first schema, before `tampered`
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, at, sha)")
        conn.execute("CREATE TABLE latest (at, project_id, iid, check_name)")
    record = DecisionRecord.open(state)
    try:
        await record.record(_decision(policy_dir, dt.datetime.now(dt.UTC), 3))
        (row,) = await record.history(1, 3)
        assert row["tampered"] is False and row["check"] == "conventional-title"
    finally:
        await record.close()

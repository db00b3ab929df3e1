"""`python -m bot migrate`: the schema in one command, and the embedded record moved into
PostgreSQL in one command (README "Running more than one")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.keys import MRKey
from bot.service.database import Database
from bot.service.pgrecord import PgRecord, link_key
from bot.service.record import DecisionRecord, StateError
from bot.service.schema import MIGRATIONS
from bot.service.transfer import Copied, copy_record
from tests.builders import decision, policy_from
from tests.processes import assert_one_error_line, run_bot

POLICY = policy_from("check: title\nrequire:\n  - title: '^feat'\n", "title.yml")


async def _sqlite_record(state_dir: Path) -> list[dict[str, Any]]:
    record = DecisionRecord.open(state_dir)
    for iid in (1, 2):
        await record.record(decision(POLICY, key=MRKey(1, iid), facts={"title": "feat: x"}))
    record.remember_project(1, "acme/app")
    record.remember_delivered(9)
    history = await record.history(1, 1)
    await record.close()
    (state_dir / "link.key").write_text("ab" * 32)
    return history


async def test_the_sqlite_record_moves_into_postgres_in_one_command(
    tmp_path: Path, pg_cluster: Any
) -> None:
    state_dir = tmp_path / "state"
    history = await _sqlite_record(state_dir)
    url = pg_cluster.new_database(template=None).replace("bot@", "bot:s3cret-pw@")
    done = await asyncio.to_thread(
        run_bot, "migrate", "--from-state-dir", str(state_dir), DATABASE_URL=url
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "copied 2 decisions, 2 latest verdicts, 1 projects, 1 unconfirmed project ids and the "
        "link key from "
    )
    assert "s3cret-pw" not in done.stdout + done.stderr
    db = Database(url)
    await db.open()
    try:
        record = PgRecord(db)
        assert await record.history(1, 1) == history
        assert await record.known_projects() == [(1, "acme/app")]
        assert await record.unconfirmed_projects() == [9]
        assert await link_key(db, lambda: b"other") == bytes.fromhex("ab" * 32)
    finally:
        await db.close()
    again = await asyncio.to_thread(
        run_bot, "migrate", "--from-state-dir", str(state_dir), DATABASE_URL=url
    )
    assert_one_error_line(again, "PostgreSQL already holds a decision record (2 decisions)")


async def _count(url: str, sql: str) -> Any:
    db = Database(url)
    await db.open()
    try:
        return await db.fetchval(sql)
    finally:
        await db.close()


async def test_two_copies_at_once_copy_the_record_once(tmp_path: Path, pg_cluster: Any) -> None:
    """The "already holds a record" check is made inside the copy's transaction, under a lock:
    of two copies started together one copies, the other refuses (it used to copy twice)."""
    state_dir = tmp_path / "state"
    await _sqlite_record(state_dir)
    url = pg_cluster.new_database(template=None)
    results = await asyncio.gather(
        copy_record(state_dir, url), copy_record(state_dir, url), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Copied", "StateError"], results
    refused = next(r for r in results if isinstance(r, StateError))
    assert str(refused).startswith("PostgreSQL already holds a decision record (2 decisions)")
    assert await _count(url, "SELECT count(*) FROM bot_decisions") == 2


async def test_a_different_link_key_in_postgres_is_refused_not_kept_silently(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """A replica started before the copy stored a key of its own: the copy refuses (nothing
    copied) and says what to do, instead of keeping that key and printing "no link key" (the
    links the single process handed out would no longer open)."""
    state_dir = tmp_path / "state"
    await _sqlite_record(state_dir)
    url = pg_cluster.new_database(template=None)
    db = Database(url)
    await db.open()
    try:
        await link_key(db, lambda: b"\x01" * 32)  # what a replica does at start
    finally:
        await db.close()
    done = await asyncio.to_thread(
        run_bot, "migrate", "--from-state-dir", str(state_dir), DATABASE_URL=url
    )
    assert_one_error_line(done, "PostgreSQL already holds a different link key")
    assert "DELETE FROM bot_meta WHERE key = 'link_key'" in done.stderr
    assert await _count(url, "SELECT count(*) FROM bot_decisions") == 0


async def test_the_same_link_key_already_in_postgres_is_reported_as_there(
    tmp_path: Path, pg_cluster: Any
) -> None:
    state_dir = tmp_path / "state"
    await _sqlite_record(state_dir)
    url = pg_cluster.new_database(template=None)
    db = Database(url)
    await db.open()
    try:
        await link_key(db, lambda: bytes.fromhex("ab" * 32))
    finally:
        await db.close()
    copied = await copy_record(state_dir, url)
    assert isinstance(copied, Copied) and copied.link_key
    assert str(copied).endswith("and the link key")


async def test_migrate_applies_the_schema_once(pg_cluster: Any) -> None:
    url = pg_cluster.new_database(template=None)
    first = await asyncio.to_thread(run_bot, "migrate", DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert f"applied versions {[m.version for m in MIGRATIONS]}" in first.stdout
    second = await asyncio.to_thread(run_bot, "migrate", DATABASE_URL=url)
    assert "already up to date" in second.stdout


def test_migrate_without_database_url_is_one_line() -> None:
    assert_one_error_line(run_bot("migrate"), "DATABASE_URL is not set")


async def test_history_and_link_read_the_fleets_state_with_database_url(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """After the move, `history` and `link` read PostgreSQL: the same rows, and a link signed
    with the fleet's key (the one every replica checks)."""
    state_dir = tmp_path / "state"
    await _sqlite_record(state_dir)
    url = pg_cluster.new_database(template=None)
    moved = await asyncio.to_thread(
        run_bot, "migrate", "--from-state-dir", str(state_dir), DATABASE_URL=url
    )
    assert moved.returncode == 0, moved.stderr
    empty = tmp_path / "elsewhere"  # not the old STATE_DIR: PostgreSQL must answer
    history = await asyncio.to_thread(
        run_bot, "history", "acme/app!1", DATABASE_URL=url, STATE_DIR=empty
    )
    assert history.returncode == 0, history.stderr
    assert history.stdout.splitlines()[0].startswith("TIME (UTC)")
    assert " title " in history.stdout.splitlines()[1]
    link = await asyncio.to_thread(
        run_bot,
        "link",
        "acme/app!1",
        DATABASE_URL=url,
        STATE_DIR=empty,
        PUBLIC_URL="https://bot.example.com",
    )
    assert link.returncode == 0, link.stderr
    from urllib.parse import parse_qs, urlsplit

    from bot.service.links import verify

    parts = urlsplit(link.stdout.strip())
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert (parts.netloc, parts.path) == ("bot.example.com", "/mr/1/1")
    assert verify(bytes.fromhex("ab" * 32), parts.path, query["expires"], query["sig"])

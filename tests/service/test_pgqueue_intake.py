"""PgQueue's intake when PostgreSQL answers but refuses a delivery (docs/queue.md): a value it
cannot store is the delivery's problem, not an outage, so it is refused (a 400) rather than held,
and a held delivery that turns out to be unstorable is dropped rather than retried forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bot.keys import BranchKey, Hint, MRKey, PushKey
from bot.service.database import Database
from bot.service.pgqueue import PgQueue, WorkCodec
from tests.conftest import eventually


class Unstorable(WorkCodec):
    """A codec that writes a hint jsonb refuses (as a NUL did before hints were cleaned)."""

    def hint(self, hint: Any) -> str:
        return '"\\u0000"' if hint == "bad" else super().hint(hint)


@pytest.fixture
async def queue(database_url: str) -> AsyncIterator[PgQueue[Any]]:
    seen: list[Any] = []

    async def handler(key: Any, hint: Any) -> None:
        seen.append(key)

    db = Database(database_url)
    await db.open()
    made: PgQueue[Any] = PgQueue(handler, db, codec=Unstorable())
    made.start()
    yield made
    await made.stop(deadline=1.0)
    await db.close()


async def keys_in(queue: PgQueue[Any]) -> list[str]:
    return [r["key"] for r in await queue.db.fetch("SELECT key FROM bot_work")]


async def test_a_delivery_postgres_refuses_is_invalid_not_held(queue: PgQueue[Any]) -> None:
    assert await queue.enqueue([(MRKey(1, 1), "bad")], "d-1") == "invalid"
    assert queue.db.problem() is None
    assert await queue.enqueue([(MRKey(1, 2), Hint())], "d-2") == "queued"
    assert '["mr", 1, 2]' in await keys_in(queue)
    # Refused, so not remembered: the same id delivered again (fixed) is not a duplicate.
    assert await queue.enqueue([(MRKey(1, 1), Hint())], "d-1") == "queued"


async def test_a_held_delivery_postgres_refuses_is_dropped_and_the_next_is_sent(
    queue: PgQueue[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Held while PostgreSQL was away; once it answers, the unstorable one is logged and
    dropped, the one held after it is queued."""
    codec = queue.codec
    assert queue._hold(None, [(codec.key(MRKey(1, 1)), codec.hint("bad"), None)]) == "held"
    assert queue._hold(None, [(codec.key(MRKey(1, 3)), codec.hint(Hint()), None)]) == "held"
    await eventually(lambda: not queue._held, 5)
    assert '["mr", 1, 3]' in await keys_in(queue)
    assert '["mr", 1, 1]' not in await keys_in(queue)
    assert "held_delivery_dropped" in capsys.readouterr().err
    assert queue.db.problem() is None


def test_hints_lose_nul_and_every_allowed_branch_name_makes_a_key_that_fits() -> None:
    codec = WorkCodec()
    assert "\\u0000" not in codec.hint(Hint(source_branch="x\x00y", project_path="a\x00"))
    odd = "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(1024))
    for key in (BranchKey(1, odd), PushKey(1, odd), BranchKey(1, "\ud800" * 1024), MRKey(1, 2)):
        text, full = codec.stored(key)
        assert len(text.encode("utf-8", "surrogatepass")) <= 1024
        assert codec.unkey(text) == key
        assert (full is None) == isinstance(key, MRKey)  # the branch names are all too long
    # Short keys are stored as before (rows written by the previous release still match).
    assert codec.key(BranchKey(1, "feature")) == '["branch", 1, "feature"]'
    assert codec.key(BranchKey(1, "é")) == '["branch", 1, "\\u00e9"]'


def test_only_connection_failures_count_as_unreachable() -> None:
    from bot.service.database import unreachable

    assert unreachable(ConnectionRefusedError())
    assert unreachable(TimeoutError())
    assert unreachable(asyncpg.InterfaceError("the pool is closed"))
    assert unreachable(asyncpg.ConnectionDoesNotExistError("gone"))
    assert unreachable(asyncpg.AdminShutdownError("57P01"))
    assert unreachable(asyncpg.CannotConnectNowError("57P03"))
    assert unreachable(asyncpg.TooManyConnectionsError("53300"))
    assert not unreachable(asyncpg.UntranslatableCharacterError("22P05"))
    assert not unreachable(asyncpg.ProgramLimitExceededError("54000"))
    assert not unreachable(asyncpg.UndefinedTableError("42P01"))


async def test_a_long_branch_key_is_claimed_as_itself(database_url: str) -> None:
    """A key stored by its digest comes back to the handler as the key delivered."""
    seen: list[Any] = []

    async def handler(key: Any, hint: Any) -> None:
        seen.append(key)

    key = BranchKey(1, "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(1024)))
    db = Database(database_url)
    await db.open()
    queue: PgQueue[Any] = PgQueue(handler, db, codec=WorkCodec())
    queue.start()
    try:
        assert await queue.enqueue([(key, Hint())], "long") == "queued"
        await asyncio.wait_for(queue.join(), 5)
        assert seen == [key]
    finally:
        await queue.stop(deadline=1.0)
        await db.close()

"""One suite for both work queues: the in-process CoalescingQueue (embedded mode) and PgQueue
(DATABASE_URL), which must keep the same promises (docs/queue.md): never two evaluations of one
key at once, the newest hint wins, the first delivery runs at once, a busy key keeps its turn,
the background lane runs last."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.service import pgqueue
from bot.service.database import Database
from bot.service.pgqueue import PgQueue
from bot.service.queue import CoalescingQueue
from tests.conftest import eventually

Queue = Any  # CoalescingQueue | PgQueue: the same interface


@pytest.fixture(params=["memory", "postgres"])
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Queue]]:
    """Build a queue of the parametrised backend; PostgreSQL ones share one fresh database, so
    several built in one test act as replicas of one fleet."""
    made: list[Queue] = []
    databases: list[Database] = []
    url = request.getfixturevalue("database_url") if request.param == "postgres" else None

    def make(handler: Any, **options: Any) -> Queue:
        queue: Queue
        if url is None:
            queue = CoalescingQueue(handler, **options)
        else:
            db = Database(url, pool_size=12)
            databases.append(db)
            queue = PgQueue(handler, db, **options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.stop(deadline=1.0)
    for db in databases:
        await db.close()


async def started(queue: Queue) -> Queue:
    if isinstance(queue, PgQueue):
        await queue.db.open()
    queue.start()
    return queue


async def put(queue: Queue, key: Any, hint: Any = None) -> None:
    """A delivery: committed before it returns (PgQueue), or queued at once (CoalescingQueue)."""
    if isinstance(queue, PgQueue):
        assert await queue.enqueue([(key, hint)]) == "queued"
    else:
        assert queue.submit(key, hint)


async def put_background(queue: Queue, key: Any, hint: Any = None) -> None:
    result = queue.submit_background(key, hint)
    if asyncio.iscoroutine(result):
        await result


class Overlap:
    """Counts evaluations running per key; `worst` is the most ever running for one key."""

    def __init__(self) -> None:
        self.now: dict[Any, int] = {}
        self.worst = 0
        self.runs: list[tuple[Any, Any]] = []

    def enter(self, key: Any, hint: Any) -> None:
        self.now[key] = self.now.get(key, 0) + 1
        self.worst = max(self.worst, self.now[key])
        self.runs.append((key, hint))

    def leave(self, key: Any) -> None:
        self.now[key] -= 1


async def test_one_key_is_never_evaluated_twice_at_once(make_queue: Callable[..., Queue]) -> None:
    """Deliveries, re-runs at once, timers and the sweep's lane hit a few keys from every side
    while they run, on more workers than keys: no key ever runs twice at the same time."""
    overlap = Overlap()
    rng = random.Random(12)

    async def handler(key: str, hint: int) -> float | None:
        overlap.enter(key, hint)
        try:
            await asyncio.sleep(rng.uniform(0.005, 0.03))
        finally:
            overlap.leave(key)
        roll = rng.random()
        if roll < 0.2:
            return 0.0  # the head moved: again at once
        if roll < 0.3:
            return 0.02  # a wake-up
        return None

    queue = await started(make_queue(handler, workers=6))
    keys = ["a", "b", "c"]
    for n in range(120):
        key = rng.choice(keys)
        if n % 7 == 0:
            await put_background(queue, key, n)
        else:
            await put(queue, key, n)
        if n % 5 == 0:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(queue.join(), 20)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(queue.join(), 20)
    assert len(overlap.runs) >= 10
    assert overlap.worst == 1


async def test_two_replicas_never_evaluate_one_key_at_once(database_url: str) -> None:
    """Two PgQueues on one database are two replicas: deliveries to either, one run at a time."""
    overlap = Overlap()

    async def handler(key: str, hint: int) -> None:
        overlap.enter(key, hint)
        await asyncio.sleep(0.02)
        overlap.leave(key)

    databases = [Database(database_url, pool_size=12) for _ in range(2)]
    fleet = [PgQueue(handler, db, workers=4) for db in databases]
    try:
        for queue in fleet:
            await started(queue)
        for n in range(60):
            await put(fleet[n % 2], "mr", n)
            await put(fleet[(n + 1) % 2], "other", n)
        for queue in fleet:
            await asyncio.wait_for(queue.join(), 20)
    finally:
        for queue in fleet:
            await queue.stop(deadline=1.0)
        for db in databases:
            await db.close()
    assert overlap.worst == 1
    # Coalesced: each run takes every delivery that arrived while the key waited, and the
    # newest hint is judged.
    assert len(overlap.runs) < 60
    assert ("mr", 59) in overlap.runs and ("other", 59) in overlap.runs


async def test_a_burst_for_one_key_runs_at_most_twice_with_the_newest_hint(
    make_queue: Callable[..., Queue],
) -> None:
    seen: list[tuple[str, int]] = []
    started_once = asyncio.Event()
    release = asyncio.Event()

    async def handler(key: str, hint: int) -> None:
        seen.append((key, hint))
        started_once.set()
        await release.wait()

    queue = await started(make_queue(handler, workers=4))
    await put(queue, "mr", 0)
    await asyncio.wait_for(started_once.wait(), 5)
    for n in range(1, 21):
        await put(queue, "mr", n)
    release.set()
    await asyncio.wait_for(queue.join(), 10)
    assert seen == [("mr", 0), ("mr", 20)]


async def test_background_work_waits_for_deliveries_and_never_duplicates_them(
    make_queue: Callable[..., Queue],
) -> None:
    order: list[str] = []
    gate = asyncio.Event()
    blocked = asyncio.Event()

    async def handler(key: str, hint: str) -> None:
        if key == "blocker":
            blocked.set()
            await gate.wait()
        order.append(f"{key}:{hint}")

    queue = await started(make_queue(handler, workers=1))
    await put(queue, "blocker", "hook")
    await asyncio.wait_for(blocked.wait(), 5)
    for n in range(3):
        await put_background(queue, f"sweep-{n}", "sweep")
    await put(queue, "a", "hook")
    await put_background(queue, "a", "sweep")  # already queued by a delivery: no second entry
    await put(queue, "sweep-2", "hook")  # a delivery promotes a background key, newest hint
    gate.set()
    await asyncio.wait_for(queue.join(), 10)
    assert order == ["blocker:hook", "a:hook", "sweep-2:hook", "sweep-0:sweep", "sweep-1:sweep"]


async def test_a_queued_key_that_gets_another_delivery_keeps_its_place(
    make_queue: Callable[..., Queue],
) -> None:
    order: list[tuple[str, int]] = []
    gate = asyncio.Event()
    blocked = asyncio.Event()

    async def handler(key: str, hint: int) -> None:
        if key == "blocker":
            blocked.set()
            await gate.wait()
        order.append((key, hint))

    queue = await started(make_queue(handler, workers=1))
    await put(queue, "blocker", 0)
    await asyncio.wait_for(blocked.wait(), 5)
    await put(queue, "busy", 1)
    for n in range(10):
        await put(queue, f"newer-{n}", 0)
        await put(queue, "busy", n + 2)
    gate.set()
    await asyncio.wait_for(queue.join(), 10)
    keys = [key for key, _ in order]
    assert keys[:3] == ["blocker", "busy", "newer-0"]
    assert order[1] == ("busy", 11)
    assert keys.count("busy") == 1


async def test_a_stream_is_evaluated_once_per_spacing_and_the_first_at_once(
    make_queue: Callable[..., Queue],
) -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(key: str, hint: int) -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.02)

    queue = await started(make_queue(handler, workers=2, min_interval=0.3))
    began = loop.time()
    for n in range(30):  # one every 20 ms for 0.6 s
        await put(queue, "mr", n)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(queue.join(), 10)
    assert starts[0] - began < 0.1  # the first delivery is judged at once
    assert len(starts) <= 4
    assert all(b - a >= 0.28 for a, b in itertools.pairwise(starts))


async def test_a_returned_delay_reschedules_and_zero_reruns_at_once(
    make_queue: Callable[..., Queue],
) -> None:
    calls: list[str] = []

    async def handler(key: str, hint: None) -> float | None:
        calls.append(key)
        if key == "moved" and calls.count("moved") == 1:
            return 0.0
        if key == "later" and calls.count("later") == 1:
            return 0.2
        return None

    queue = await started(make_queue(handler, workers=2))
    await put(queue, "moved")
    await put(queue, "later")
    await asyncio.wait_for(queue.join(), 10)
    assert calls.count("moved") == 2
    assert calls.count("later") == 1
    # The timer fires: soon after its 0.2 s, and within a poll (1 s) however busy the machine.
    await eventually(lambda: calls.count("later") == 2, 3)
    await asyncio.wait_for(queue.join(), 10)


# -- leases (PostgreSQL only): a claim lost while its owner still works -------------------------


def failing_heartbeats(queue: PgQueue[Any], monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """While the returned event is set, this replica's heartbeats fail as if PostgreSQL were
    unreachable for them alone (its claims and reaper still get through): its leases run out."""
    cut = asyncio.Event()
    db = queue.db
    for name in ("execute", "fetch", "fetchrow", "fetchval"):
        real = getattr(db, name)

        async def call(sql: str, *args: Any, _real: Any = real) -> Any:
            if sql == pgqueue._HEARTBEAT and cut.is_set():
                raise ConnectionResetError("cut off (test)")
            return await _real(sql, *args)

        monkeypatch.setattr(db, name, call)
    return cut


def recovered_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    lines = []
    for line in capsys.readouterr().err.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return [line for line in lines if line.get("event") == "work_recovered"]


async def test_a_key_claimed_again_by_the_same_replica_keeps_its_lease(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Heartbeats fail for longer than the lease while a run is under way; the replica's own
    reaper puts the key back and the replica claims it again. When the first run ends it must
    not take the second run's heartbeat with it: the second run keeps its lease, the key is
    not recovered a second time, and no third run starts. The recovery names the old owner."""
    monkeypatch.setattr(pgqueue, "REAP_EVERY", 0.2)
    events: list[str] = []
    first_may_end = asyncio.Event()
    second_started = asyncio.Event()

    async def handler(key: str, hint: Any) -> None:
        n = sum(event.startswith("start") for event in events) + 1
        events.append(f"start {n}")
        try:
            if n == 1:
                await first_may_end.wait()
            elif n == 2:
                second_started.set()
                await asyncio.sleep(2.5)  # well over the lease and a reap
        finally:
            events.append(f"end {n}")

    db = Database(database_url, pool_size=6)
    queue: PgQueue[Any] = PgQueue(handler, db, workers=2, lease=1.0)
    cut = failing_heartbeats(queue, monkeypatch)
    try:
        await started(queue)
        capsys.readouterr()
        await put(queue, "mr")
        await eventually(lambda: events == ["start 1"], 5)
        cut.set()
        await asyncio.wait_for(second_started.wait(), 5)
        cut.clear()
        first_may_end.set()
        await eventually(lambda: "end 2" in events, 10)
        await asyncio.wait_for(queue.join(), 10)
    finally:
        await queue.stop(deadline=1.0)
        await db.close()
    second = events[events.index("start 2") : events.index("end 2")]
    assert "start 3" not in second, events  # nothing else ran while the second run held it
    assert queue.recovered == 1
    assert [line.get("owner") for line in recovered_lines(capsys)] == [queue.owner]


async def test_a_run_whose_lease_was_lost_stops_and_the_key_is_judged_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica A's heartbeats fail past its lease mid-run; replica B takes the key over and
    finishes it. When A's heartbeat gets through again it renews nothing: A's run is cancelled
    before it posts, and because A's finish no longer matches, the key runs once more after it,
    so the newest state is judged last."""
    monkeypatch.setattr(pgqueue, "REAP_EVERY", 0.2)
    events: list[str] = []
    may_post = asyncio.Event()

    async def handler(key: str, hint: Any) -> None:
        n = sum(event.startswith("start") for event in events) + 1
        events.append(f"start {n}")
        if n == 1:
            try:
                await may_post.wait()
            except asyncio.CancelledError:
                events.append("cancelled 1")
                raise
        events.append(f"post {n}")

    databases = [Database(database_url, pool_size=6) for _ in range(2)]
    a: PgQueue[Any] = PgQueue(handler, databases[0], workers=2, lease=1.0)
    b: PgQueue[Any] = PgQueue(handler, databases[1], workers=2, lease=1.0)
    cut = failing_heartbeats(a, monkeypatch)
    try:
        await started(a)
        await put(a, "mr")
        await eventually(lambda: events == ["start 1"], 5)
        cut.set()
        await started(b)
        await eventually(lambda: "post 2" in events, 10)
        cut.clear()
        with contextlib.suppress(AssertionError):  # judged below
            await eventually(lambda: "cancelled 1" in events, 3)
        may_post.set()
        await asyncio.sleep(0.2)
        await asyncio.wait_for(a.join(), 10)
    finally:
        for queue in (a, b):
            await queue.stop(deadline=1.0)
        for db in databases:
            await db.close()
    assert "post 1" not in events, events
    assert events.index("cancelled 1") < events.index("start 3"), events
    assert events[-1] == "post 3", events


async def test_a_graceful_stop_keeps_the_lease_of_a_run_until_it_ends(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica is stopped while a run takes longer than the lease: it keeps the heartbeat
    going until the run ends, so no other replica starts the key meanwhile; then it gives the
    key back."""
    monkeypatch.setattr(pgqueue, "REAP_EVERY", 0.2)
    overlap = Overlap()
    began = asyncio.Event()

    async def handler(key: str, hint: Any) -> None:
        overlap.enter(key, hint)
        began.set()
        try:
            await asyncio.sleep(2.5 if hint == "slow" else 0.01)
        finally:
            overlap.leave(key)

    databases = [Database(database_url, pool_size=6) for _ in range(2)]
    a: PgQueue[Any] = PgQueue(handler, databases[0], workers=2, lease=1.0)
    b: PgQueue[Any] = PgQueue(handler, databases[1], workers=2, lease=1.0)
    try:
        await started(a)
        await put(a, "mr", "slow")
        await asyncio.wait_for(began.wait(), 5)
        await started(b)
        await put(b, "mr", "after")  # asked again while A runs: B runs it after A
        assert await a.stop(deadline=10.0) == 0
        await asyncio.wait_for(b.join(), 10)
    finally:
        for queue in (a, b):
            await queue.stop(deadline=1.0)
        for db in databases:
            await db.close()
    assert overlap.worst == 1
    assert b.recovered == 0
    assert overlap.runs == [("mr", "slow"), ("mr", "after")]

"""One suite for both work queues: the in-process CoalescingQueue (embedded mode) and PgQueue
(DATABASE_URL), which must keep the same promises (docs/queue.md): never two evaluations of one
key at once, the newest hint wins, the first delivery runs at once, a busy key keeps its turn,
the background lane runs last."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

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

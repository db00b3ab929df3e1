"""The coalescing queue: one entry per MR, never two evaluations of one MR at once,
newest hint wins."""

from __future__ import annotations

import asyncio
import itertools

from bot.service.queue import CoalescingQueue


async def test_burst_for_one_key_runs_at_most_twice_with_the_newest_hint() -> None:
    seen: list[tuple[str, int]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(key: str, hint: int) -> None:
        seen.append((key, hint))
        started.set()
        await release.wait()

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=4)
    queue.start()
    queue.submit("mr", 0)
    await started.wait()
    for n in range(1, 21):
        queue.submit("mr", n)
    assert queue.depth == 1
    release.set()
    await queue.join()
    await queue.stop()
    assert seen == [("mr", 0), ("mr", 20)]


async def test_different_keys_run_in_parallel_up_to_the_worker_bound() -> None:
    running = 0
    peak = 0

    async def handler(key: int, hint: None) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    queue: CoalescingQueue[int] = CoalescingQueue(handler, workers=3)
    queue.start()
    for key in range(10):
        queue.submit(key)
    await queue.join()
    await queue.stop()
    assert peak == 3
    assert queue.evaluations == 10


async def test_queue_holds_one_entry_per_key_however_many_submissions() -> None:
    async def handler(key: int, hint: None) -> None:
        await asyncio.sleep(0)

    queue: CoalescingQueue[int] = CoalescingQueue(handler, workers=1)
    for _ in range(100):
        for key in range(50):
            queue.submit(key)
    assert queue.depth == 50
    queue.start()
    await queue.join()
    await queue.stop()
    assert queue.evaluations == 50


async def test_returned_delay_reschedules_and_zero_reruns_at_once() -> None:
    calls: list[str] = []

    async def handler(key: str, hint: None) -> float | None:
        calls.append(key)
        if key == "moved" and calls.count("moved") == 1:
            return 0.0
        if key == "later" and calls.count("later") == 1:
            return 0.05
        return None

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=2)
    queue.start()
    queue.submit("moved")
    queue.submit("later")
    await queue.join()
    assert calls.count("moved") == 2
    assert queue.scheduled == 1
    await asyncio.sleep(0.15)
    await queue.join()
    assert calls.count("later") == 2
    assert queue.scheduled == 0
    await queue.stop()


async def test_a_crashing_handler_does_not_kill_its_worker() -> None:
    calls: list[int] = []

    async def handler(key: int, hint: None) -> None:
        calls.append(key)
        if key == 1:
            raise RuntimeError("bug")

    queue: CoalescingQueue[int] = CoalescingQueue(handler, workers=1)
    queue.start()
    queue.submit(1)
    queue.submit(2)
    await queue.join()
    await queue.stop()
    assert calls == [1, 2]


async def test_stop_lets_running_work_finish_and_refuses_new_work() -> None:
    finished = []

    async def handler(key: int, hint: None) -> None:
        await asyncio.sleep(0.05)
        finished.append(key)

    queue: CoalescingQueue[int] = CoalescingQueue(handler, workers=1)
    queue.start()
    queue.submit(1)
    queue.submit(2)
    await asyncio.sleep(0.01)
    abandoned = await queue.stop(deadline=1.0)
    assert finished == [1]
    assert abandoned == 1
    assert queue.submit(3) is False


async def test_background_work_waits_for_deliveries_and_never_duplicates_them() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def handler(key: str, hint: str) -> None:
        if key == "blocker":
            await gate.wait()
        order.append(f"{key}:{hint}")

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=1)
    queue.start()
    queue.submit("blocker", "hook")
    await asyncio.sleep(0)
    for n in range(3):
        queue.submit_background(f"sweep-{n}", "sweep")
    queue.submit("a", "hook")
    queue.submit_background("a", "sweep")  # already queued by a delivery: no second entry
    queue.submit("sweep-2", "hook")  # a delivery promotes a background key, newest hint
    assert queue.depth == 4
    assert queue.background_depth == 2
    gate.set()
    await queue.join()
    await queue.stop()
    assert order == ["blocker:hook", "a:hook", "sweep-2:hook", "sweep-0:sweep", "sweep-1:sweep"]


async def test_a_stream_of_deliveries_is_evaluated_once_per_spacing() -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(key: str, hint: int) -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.02)

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=2, min_interval=0.3)
    queue.start()
    began = loop.time()
    for n in range(30):  # one every 20 ms for 0.6 s: idle in between evaluations
        queue.submit("mr", n)
        await asyncio.sleep(0.02)
    await queue.join()
    await queue.stop()
    assert starts[0] - began < 0.01  # the first delivery is judged at once
    assert len(starts) <= 4  # 0, 0.3, 0.6 (+ the last hint), not 30
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(starts))


async def test_a_queued_key_that_gets_another_delivery_keeps_its_place() -> None:
    """Under a backlog, a busy MR that keeps receiving deliveries is evaluated in its turn: a new
    delivery updates its hint where it stands instead of sending it behind every newer MR."""
    order: list[tuple[str, int]] = []
    gate = asyncio.Event()

    async def handler(key: str, hint: int) -> None:
        if key == "blocker":
            await gate.wait()
        order.append((key, hint))

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=1)
    queue.start()
    queue.submit("blocker", 0)
    await asyncio.sleep(0)
    queue.submit("busy", 1)
    for n in range(20):
        queue.submit(f"newer-{n}", 0)
        queue.submit("busy", n + 2)  # the busy MR's deliveries keep coming
    gate.set()
    await queue.join()
    await queue.stop()
    keys = [key for key, _ in order]
    assert keys[:3] == ["blocker", "busy", "newer-0"]
    assert order[1] == ("busy", 21)  # its newest hint, in its first turn
    assert keys.count("busy") == 1


async def test_a_cooling_key_keeps_the_turn_of_its_first_delivery() -> None:
    """An MR evaluated moments ago waits out the spacing, then runs before MRs that were queued
    after its delivery arrived, not behind everything queued while it cooled."""
    order: list[str] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def handler(key: str, hint: None) -> None:
        order.append(key)
        if key == "blocker":
            await gate.wait()

    queue: CoalescingQueue[str] = CoalescingQueue(handler, workers=1, min_interval=0.2)
    queue.start()
    queue.submit("busy")
    await asyncio.sleep(0.01)  # evaluated at once (nothing queued)
    queue.submit("blocker")
    await asyncio.sleep(0.01)  # the only worker is now held by the blocker: a backlog builds
    queue.submit("older")
    queue.submit("busy")  # too soon after its last start: it cools for 0.2 s
    for n in range(5):
        queue.submit(f"newer-{n}")
    began = loop.time()
    while loop.time() - began < 0.3:  # deliveries for the busy MR keep coming while it cools
        queue.submit("busy")
        await asyncio.sleep(0.02)
    gate.set()
    await queue.join()
    await queue.stop()
    assert order[:4] == ["busy", "blocker", "older", "busy"]
    assert order.count("busy") == 2

"""Several real `python -m bot serve` processes on one PostgreSQL database (DATABASE_URL): a
killed replica loses no delivery it acknowledged, a burst for one MR is judged a few times and
never by two replicas at once, and a rolling deploy fails no delivery (README "Running more than
one")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.builders import seed_mr
from tests.fakegitlab import FakeGitLab
from tests.fakegitlab.server import Call
from tests.fleet import Fleet, Replica, deliver
from tests.payloads import merge_request_hook

SHA = "1" * 40
CHECKS = ("conventional-title",)
POLICY = """check: conventional-title
require:
  - title: '^(feat|fix|docs|chore)(\\(.+\\))?: '
"""


@pytest.fixture
async def fleet(gitlab: FakeGitLab, database_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "title.yml").write_text(POLICY)
    fleet = Fleet(gitlab, database_url, policies, tmp_path)
    yield fleet
    await fleet.close()


class MRReads:
    """Slows every read of one MR and tracks how many run at once: a read is the start of an
    evaluation, so two reads at once are two evaluations of the MR at once."""

    def __init__(self, gitlab: FakeGitLab, iid: int, delay: float) -> None:
        self.path = f"/projects/1/merge_requests/{iid}"
        self.delay = delay
        self.now = 0
        self.worst = 0
        self.count = 0
        self.started = asyncio.Event()
        gitlab.on_request("GET", self.path, self._read)

    async def _read(self, call: Call) -> None:
        if not call.path.endswith(self.path):
            return
        self.count += 1
        self.now += 1
        self.worst = max(self.worst, self.now)
        self.started.set()
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1


async def idle(database_url: str, limit: float = 20.0) -> None:
    """Wait until no key is queued or running anywhere in the fleet."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + limit
        while await conn.fetchval(
            "SELECT count(*) FROM bot_work WHERE requested OR owner IS NOT NULL"
        ):
            assert time.monotonic() < deadline, "the fleet did not finish its work"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def owner_of(database_url: str, iid: int) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        owner = await conn.fetchval(
            "SELECT owner FROM bot_work WHERE key = $1", f'["mr", 1, {iid}]'
        )
    finally:
        await conn.close()
    return None if owner is None else str(owner)


async def judged_within(gitlab: FakeGitLab, iid: int, since: float, limit: float) -> None:
    while gitlab.check_status(1, iid, "conventional-title") != "passed":
        assert time.monotonic() < since + limit, f"!{iid}: no verdict within {limit:g} s"
        await asyncio.sleep(0.05)


async def test_a_delivery_acknowledged_by_a_killed_replica_is_judged_by_another_within_10_s(
    gitlab: FakeGitLab, fleet: Fleet, database_url: str
) -> None:
    """Three replicas. !1 is delivered to one that is SIGKILLed as soon as it answers 202;
    !2's evaluation is under way (a slow GitLab read) when the replica running it is SIGKILLed,
    so its claim stays behind until the lease runs out. Both verdicts come within 10 s from the
    others, and no sweep runs (RECONCILE_INTERVAL is an hour)."""
    seed_mr(gitlab, CHECKS, iid=1, title="feat: x", sha=SHA)
    seed_mr(gitlab, CHECKS, iid=2, title="feat: y", sha=SHA)
    reads = MRReads(gitlab, 2, delay=1.0)
    replicas = list(await asyncio.gather(*(fleet.start() for _ in range(3))))
    async with aiohttp.ClientSession() as session:
        status, _ = await deliver(session, replicas[0], merge_request_hook(iid=1, sha=SHA), "k1")
        assert status == 202
        await fleet.kill(replicas[0])
        killed = time.monotonic()
        await judged_within(gitlab, 1, killed, 10)

        status, _ = await deliver(session, replicas[1], merge_request_hook(iid=2, sha=SHA), "k2")
        assert status == 202
    await asyncio.wait_for(reads.started.wait(), 5)
    owner = await owner_of(database_url, 2)
    running = next(r for r in replicas[1:] if f":{r.proc.pid}:" in str(owner))
    await fleet.kill(running)
    killed = time.monotonic()
    await judged_within(gitlab, 2, killed, 10)
    assert len(gitlab.status_posts()) == 2
    survivor = next(r for r in replicas[1:] if r is not running)
    recovered = survivor.events("work_recovered")
    assert recovered, "the verdict did not come through the lease"
    assert recovered[0]["owner"] == owner  # the killed replica is named, not None
    assert not any(r.events("sweep_finished")[1:] for r in replicas)


async def test_a_burst_of_50_over_3_replicas_is_judged_at_most_4_times_never_at_once(
    gitlab: FakeGitLab, fleet: Fleet, database_url: str
) -> None:
    """50 deliveries for one MR within a second, round-robin over 3 replicas, with the product's
    EVALUATION_SPACING (0.5 s) and a GitLab read slower than that: at most 4 evaluations, one at
    a time."""
    seed_mr(gitlab, CHECKS, title="feat: x", sha=SHA)
    reads = MRReads(gitlab, 1, delay=0.6)  # longer than the spacing
    replicas = await asyncio.gather(*(fleet.start() for _ in range(3)))
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for n in range(50):
            status, _ = await deliver(
                session, replicas[n % 3], merge_request_hook(sha=SHA), f"burst-{n}"
            )
            assert status == 202
            await asyncio.sleep(max(0.0, began + (n + 1) * 0.019 - time.monotonic()))
    assert time.monotonic() - began < 1.2
    await idle(database_url)
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert reads.worst == 1
    assert 1 <= reads.count <= 4, reads.count


async def test_a_rolling_deploy_under_steady_deliveries_fails_none_and_ends_correct(
    gitlab: FakeGitLab, fleet: Fleet, database_url: str
) -> None:
    """Two replicas behind a load balancer that routes to ready ones (it probes /readyz every
    250 ms; DRAIN_DELAY is longer); a delivery every 20 ms for 8 MRs whose titles change
    meanwhile. One replica is replaced, then the other (start a new one, SIGTERM an old one,
    as RollingUpdate does): every delivery is answered 202, and every MR ends with the verdict
    of its last title."""
    for iid in range(1, 9):
        seed_mr(gitlab, CHECKS, iid=iid, title="feat: x", sha=SHA)
    fleet.settings = {"DRAIN_DELAY": 1}
    live: list[Replica] = list(await asyncio.gather(*(fleet.start() for _ in range(2))))
    ready: set[str] = {r.name for r in live}
    failures: list[Any] = []
    sent = 0
    stop = asyncio.Event()

    async def probe(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            for replica in list(live):
                ok = False
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{replica.url}/readyz", timeout=0.5) as resp:
                        ok = resp.status == 200
                (ready.add if ok else ready.discard)(replica.name)
            await asyncio.sleep(0.25)

    async def traffic(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        n = 0
        while not stop.is_set():
            targets = [r for r in live if r.name in ready]
            if targets:
                replica = targets[n % len(targets)]
                iid = n % 8 + 1
                if n % 5 == 0:  # the MR changes: its verdict must follow
                    gitlab.update_mr(1, iid, title="wip" if n % 10 else "fix: y")
                try:
                    status, body = await deliver(
                        session, replica, merge_request_hook(iid=iid, sha=SHA), f"roll-{n}"
                    )
                    if status != 202:
                        failures.append((replica.name, status, body))
                except aiohttp.ClientError as exc:
                    failures.append((replica.name, repr(exc)))
                sent += 1
                n += 1
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(probe(session)), asyncio.create_task(traffic(session))]
        await asyncio.sleep(1.0)
        for old in list(live):
            new = await fleet.start()
            live.append(new)
            while new.name not in ready:  # noqa: ASYNC110 (the balancer's view, polled)
                await asyncio.sleep(0.05)
            stopping = asyncio.create_task(fleet.stop(old))
            while old.name in ready:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            live.remove(old)
            assert await stopping == 0, old.log.read_text()[-3000:]
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
    await idle(database_url)
    assert failures == []
    assert sent > 100
    for iid in range(1, 9):
        title = gitlab.mr(1, iid)["title"]
        expected = "failed" if title == "wip" else "passed"
        assert gitlab.check_status(1, iid, "conventional-title") == expected, (iid, title)


async def test_a_postgres_restart_under_deliveries_crashes_nothing_and_loses_no_verdict(
    gitlab: FakeGitLab, fleet: Fleet, database_url: str, pg_cluster: Any
) -> None:
    """Two replicas; PostgreSQL restarts while deliveries keep coming (each answered 202, the
    ones during the restart `held`). Both replicas live on, /readyz named the outage while it
    lasted, and every MR ends with the verdict of its last title."""
    for iid in range(1, 7):
        seed_mr(gitlab, CHECKS, iid=iid, title="wip", sha=SHA)
    replicas = list(await asyncio.gather(*(fleet.start() for _ in range(2))))
    statuses: list[int] = []
    held = 0
    saw_outage = False
    async with aiohttp.ClientSession() as session:

        async def send(n: int) -> None:
            nonlocal held
            iid = n % 6 + 1
            if n >= 30:
                gitlab.update_mr(1, iid, title="feat: ready")
            status, body = await deliver(
                session, replicas[n % 2], merge_request_hook(iid=iid, sha=SHA), f"restart-{n}"
            )
            statuses.append(status)
            held += bool(body.get("held"))

        for n in range(10):
            await send(n)
            await asyncio.sleep(0.02)
        restart = asyncio.create_task(asyncio.to_thread(pg_cluster.restart))
        for n in range(10, 36):
            await send(n)
            if not saw_outage:
                async with session.get(f"{replicas[n % 2].url}/readyz") as resp:
                    ready = await resp.json()
                saw_outage = any("PostgreSQL" in w for w in ready.get("warnings", []))
            await asyncio.sleep(0.05)
        await restart
        for n in range(36, 42):  # after the restart: every MR once more
            await send(n)
    await idle(database_url, limit=30)
    for iid in range(1, 7):
        deadline = time.monotonic() + 15
        while gitlab.check_status(1, iid, "conventional-title") != "passed":
            assert time.monotonic() < deadline, f"!{iid} lost its verdict"
            await asyncio.sleep(0.05)
    assert statuses == [202] * 42
    assert all(r.proc.returncode is None for r in replicas), "a replica died"
    assert held and saw_outage, "the restart was never noticed: the test did not test it"


async def test_replicas_stopped_under_traffic_exit_promptly(
    gitlab: FakeGitLab, fleet: Fleet
) -> None:
    """SIGTERM while deliveries stream in, four times over: each replica drains and exits within
    a few seconds. (A cancellation lost in the queue's dispatcher once left a stopping replica
    running for good; this caught it within two rounds.)"""
    for iid in range(1, 9):
        seed_mr(gitlab, CHECKS, iid=iid, title="feat: x", sha=SHA)
    fleet.settings = {"DRAIN_DELAY": 0.3}
    async with aiohttp.ClientSession() as session:
        for round_ in range(4):
            replicas = list(await asyncio.gather(fleet.start(), fleet.start()))
            stop = asyncio.Event()

            async def traffic(
                replicas: list[Replica] = replicas, round_: int = round_, stop: Any = stop
            ) -> None:
                n = 0
                while not stop.is_set():
                    with contextlib.suppress(aiohttp.ClientError):
                        hook = merge_request_hook(iid=n % 8 + 1, sha=SHA)
                        await deliver(session, replicas[n % 2], hook, f"t{round_}-{n}")
                    n += 1
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(traffic())
            await asyncio.sleep(0.3 + 0.2 * round_)
            codes = await asyncio.gather(*(fleet.stop(r, limit=10) for r in replicas))
            stop.set()
            await task
            assert codes == [0, 0]


async def test_a_stopping_replica_keeps_its_lease_so_the_newest_state_is_judged_last(
    gitlab: FakeGitLab, fleet: Fleet, database_url: str
) -> None:
    """A rolling deploy stops the replica that is posting `failed` for the title "wip" (a slow
    POST, 7 s, longer than the 5 s lease) just after the title became "feat: ready". The stopping
    replica keeps its lease while it finishes, so the other one takes the MR only after it and
    judges the new title last: the MR ends `passed`, and no lease was recovered. (With the
    heartbeat stopped at SIGTERM, the other replica took the MR over at 5 s, posted `passed`,
    and the old `failed` landed after it.)"""
    seed_mr(gitlab, CHECKS, iid=1, title="wip", sha=SHA)
    fleet.settings = {"SHUTDOWN_DEADLINE": 20, "DRAIN_DELAY": 0.2}
    replicas = list(await asyncio.gather(fleet.start(), fleet.start()))
    posting = asyncio.Event()

    async def slow_post(call: Call) -> None:
        posting.set()
        await asyncio.sleep(7)  # under GITLAB_TIMEOUT (10 s): the POST is not retried

    gitlab.on_request("POST", "/status_check_responses", slow_post, times=1)
    async with aiohttp.ClientSession() as session:
        status, _ = await deliver(session, replicas[0], merge_request_hook(iid=1, sha=SHA), "a")
        assert status == 202
        await asyncio.wait_for(posting.wait(), 5)
        owner = await owner_of(database_url, 1)
        running = next(r for r in replicas if f":{r.proc.pid}:" in str(owner))
        other = next(r for r in replicas if r is not running)
        gitlab.update_mr(1, 1, title="feat: ready")
        status, _ = await deliver(session, other, merge_request_hook(iid=1, sha=SHA), "b")
        assert status == 202
        assert await fleet.stop(running, limit=30) == 0
    await idle(database_url)
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert not other.events("work_recovered")

"""The sweep's leader in a fleet of real `serve` processes: a leader that is frozen (SIGSTOP,
as a paused VM or a node cut off without closing its TCP connections) is replaced within its
lease and an interval, and steps down when it wakes (README "Running more than one")."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.fakegitlab import FakeGitLab
from tests.fleet import Fleet

INTERVAL = 2.0
LEASE = 5.0  # bot.service.leader.LEASE


@pytest.fixture
async def fleet(gitlab: FakeGitLab, database_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "title.yml").write_text("check: title\nrequire:\n  - title: '^feat'\n")
    fleet = Fleet(gitlab, database_url, policies, tmp_path, {"RECONCILE_INTERVAL": INTERVAL})
    yield fleet
    await fleet.close()


async def test_a_frozen_sweep_leader_is_replaced_within_its_lease_and_an_interval(
    fleet: Fleet,
) -> None:
    replicas = list(await asyncio.gather(fleet.start(), fleet.start()))
    await eventually(lambda: any(r.events("sweep_leader") for r in replicas), 10)
    leader = next(r for r in replicas if r.events("sweep_leader"))
    standby = next(r for r in replicas if r is not leader)
    assert not standby.events("sweep_leader")
    leader.proc.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        before = len(standby.events("sweep_finished"))
        await eventually(lambda: len(standby.events("sweep_finished")) > before, 15)
        took = time.monotonic() - frozen
        assert standby.events("sweep_leader")
        assert took < LEASE + INTERVAL + 2, took
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    # Awake again, the old leader finds its lease taken and stands by: it sweeps no more.
    await eventually(lambda: leader.events("sweep_leader_stepped_down"), 5)
    swept = len(leader.events("sweep_finished"))
    await asyncio.sleep(2 * INTERVAL)
    assert len(leader.events("sweep_finished")) == swept
    assert len(standby.events("sweep_finished")) >= before + 2

"""What the scenarios share: options, a scratch folder, the processes under test, a client for the
fake GitLab's control endpoints (/_fake/...), and the figures collected so far."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import TOKEN, Process, start_bare, start_bot, start_fake
from bench.report import Figure

# The policy the latency and economy figures are about: it needs the MR, its diffs and its
# approvals. Every seeded MR of the fake passes it (conventional title, 3 files, carol approved).
BENCH_CHECK = "bench-review"
BENCH_POLICY = """\
# Benchmark policy: needs the MR (title), its diffs and its approvals.
check: bench-review
require:
  - title: '^(feat|fix|chore)(\\(.+\\))?: '
  - changed_files_count: {max: 40}
  - approvals: {count: 1}
"""
# Settings every bot started by the benchmark gets unless a scenario says otherwise: no sweep
# during the latency runs (it has its own scenario).
QUIET_BOT = {"RECONCILE_INTERVAL": "3600"}


@dataclass
class Options:
    quick: bool = False
    repeats: int = 3
    duration: float = 4.0  # seconds per wrk run
    loadgen: str = "auto"  # auto | wrk | aiohttp
    sweep_sizes: tuple[int, ...] = (100, 1000, 10000)
    memory_mrs: int = 10000
    profile: Path | None = None  # record a py-spy profile of every bot into this folder


@dataclass
class Ranges:
    """Which seeded MR iids each scenario uses, so one scenario's posted statuses never make
    another's MRs look already decided."""

    intake: range
    decision: range
    coalescing: range
    batch: range

    @classmethod
    def for_options(cls, options: Options) -> Ranges:
        if options.quick:
            return cls(range(1, 101), range(101, 121), range(121, 126), range(126, 176))
        return cls(range(1, 501), range(501, 601), range(601, 621), range(621, 921))

    @property
    def seed(self) -> int:
        return self.batch.stop - 1


class FakeControl:
    """The fake GitLab's unauthenticated control endpoints, from another process."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def _json(self, method: str, path: str, **params: Any) -> Any:
        async with self.session.request(method, f"{self.url}/_fake/{path}", params=params) as r:
            r.raise_for_status()
            return await r.json()

    async def stats(self) -> dict[str, Any]:
        return await self._json("GET", "stats")

    async def mark(self) -> int:
        """The index the next recorded call will get."""
        return int((await self.stats())["calls"])

    async def calls(self, since: int) -> list[dict[str, Any]]:
        return (await self._json("GET", "calls", since=since))["calls"]

    async def set_latency(self, seconds: float) -> None:
        await self._json("POST", "latency", seconds=seconds)

    async def wait_quiet(self, quiet: float = 0.3, limit: float = 60.0) -> bool:
        """Wait until no call arrived and none is in flight for `quiet` seconds."""
        deadline = time.monotonic() + limit
        last = -1
        since = time.monotonic()
        while time.monotonic() < deadline:
            stats = await self.stats()
            if stats["calls"] != last or stats["in_flight"]:
                last = stats["calls"]
                since = time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
            await asyncio.sleep(0.05)
        return False


def mr_calls(calls: list[dict[str, Any]], iid: int) -> list[dict[str, Any]]:
    """The calls about MR `iid` (its own path and sub-resources)."""
    pattern = re.compile(rf"/merge_requests/{iid}(/|$)")
    return [c for c in calls if pattern.search(c["path"])]


def read_rounds(reads: list[dict[str, Any]]) -> int:
    """How many sequential rounds `reads` took: a read that starts only after some read of the
    current round was answered opens a new round (it could have waited for that answer)."""
    rounds = 0
    round_first_answer = float("-inf")
    for call in sorted(reads, key=lambda c: c["started"]):
        if call["started"] >= round_first_answer:
            rounds += 1
            round_first_answer = call["finished"] or float("inf")
        else:
            round_first_answer = min(round_first_answer, call["finished"] or float("inf"))
    return rounds


@dataclass
class Harness:
    options: Options
    workdir: Path
    session: aiohttp.ClientSession
    figures: list[Figure] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # numbers the scaling section uses
    processes: list[Process] = field(default_factory=list)
    _main: tuple[Process, Process] | None = None
    _bare: Process | None = None

    def __post_init__(self) -> None:
        self.ranges = Ranges.for_options(self.options)
        self.policy_dir = self.workdir / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        (self.policy_dir / "bench-review.yml").write_text(BENCH_POLICY)

    def gitlab_session_headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": TOKEN}

    async def start(self, starter: Any, /, **kwargs: Any) -> Process:
        """Start a process (in a thread: start-up blocks on its first line or /healthz)."""
        process = await asyncio.to_thread(starter, self.workdir, **kwargs)
        self.processes.append(process)
        if self.options.profile is not None and process.name.startswith("bot"):
            self.options.profile.mkdir(parents=True, exist_ok=True)
            process.profile_into(self.options.profile)
        return process

    async def main(self) -> tuple[Process, Process, FakeControl]:
        """The fake GitLab (seeded for every shared scenario) and the bot serving it."""
        if self._main is None:
            fake, _ = await asyncio.gather(
                self.start(start_fake, seed_mrs=self.ranges.seed, checks=[BENCH_CHECK]),
                self.bare(),
            )
            bot = await self.start(
                start_bot, gitlab_url=fake.url, policy_dir=self.policy_dir, env=QUIET_BOT
            )
            self._main = (fake, bot)
        fake, bot = self._main
        return fake, bot, FakeControl(self.session, fake.url)

    async def bare(self) -> Process:
        if self._bare is None:
            self._bare = await self.start(start_bare)
        return self._bare

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        # Bots first, so none of them sees its GitLab vanish and logs a storm of retries.
        for process in sorted(self.processes, key=lambda p: not p.name.startswith("bot")):
            process.stop()
        self.processes.clear()

"""`python -m bench.fleet`: what PostgreSQL (DATABASE_URL) costs and buys, as ratios within one
run (BENCHMARKS.md, "Running more than one"). Starts a throwaway PostgreSQL cluster (Debian's
postgresql package, as the tests do), the fake GitLab and real `python -m bot serve` processes.

Rows: intake throughput of one process on PostgreSQL against one on SQLite; decisions/s of a
2- and 3-process fleet against one process; evaluations per burst of 50 deliveries for one MR
spread over 3 processes; what the database does per decision (transactions and rows written,
from pg_stat_database)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import BENCH_CHECK, FakeControl
from bench.load import deliver, have_wrk, run_aiohttp, run_wrk
from bench.procs import Process, start_bot, start_fake
from tests.postgres import Cluster, require_binaries

TITLE_POLICY = f"""check: {BENCH_CHECK}
require:
  - title: '^(feat|fix|docs|chore)'
"""
QUIET = {"RECONCILE_INTERVAL": "3600"}
START = "<!-- bench:fleet:start -->"
END = "<!-- bench:fleet:end -->"


async def pg_counters(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        return {k: int(v) for k, v in dict(row).items()}
    finally:
        await conn.close()


async def decided(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM bot_latest"))
    finally:
        await conn.close()


class Run:
    def __init__(self, workdir: Path, quick: bool) -> None:
        self.workdir = workdir
        self.quick = quick
        self.cluster = Cluster(require_binaries(), durable=True)
        self.policies = workdir / "policies"
        self.policies.mkdir()
        (self.policies / "title.yml").write_text(TITLE_POLICY)
        self.processes: list[Process] = []
        self.rows: list[tuple[str, str, str, str]] = []

    def bot(self, fake: Process, name: str, database_url: str | None, **env: str) -> Process:
        settings = dict(QUIET, **env)
        if database_url:
            settings["DATABASE_URL"] = database_url
        process = start_bot(
            self.workdir, gitlab_url=fake.url, policy_dir=self.policies, name=name, env=settings
        )
        self.processes.append(process)
        return process

    def stop(self, *processes: Process) -> None:
        for process in processes:
            process.stop()
            self.processes.remove(process)

    async def intake(self, fake: Process) -> None:
        """202s per second of one process, SQLite against PostgreSQL, same load."""
        duration = 2.0 if self.quick else 5.0
        rates = {}
        for name, url in (("sqlite", None), ("postgres", self.cluster.new_database())):
            bot = await asyncio.to_thread(self.bot, fake, f"bot-intake-{name}", url)
            if have_wrk():
                result = await asyncio.to_thread(
                    run_wrk,
                    bot.url,
                    self.workdir,
                    connections=16,
                    duration=duration,
                    first_iid=1,
                    iid_count=200,
                )
            else:
                result = await run_aiohttp(
                    bot.url, connections=16, duration=duration, first_iid=1, iid_count=200
                )
            rates[name] = (result.requests - result.non2xx - result.errors) / result.seconds
            self.stop(bot)
        self.rows.append(
            (
                "intake throughput, one process (202/s): PostgreSQL vs SQLite",
                f"{rates['postgres']:.0f}/s",
                f"{rates['sqlite']:.0f}/s",
                f"{rates['postgres'] / rates['sqlite']:.2f}",
            )
        )

    async def decisions(self, fake: Process, session: aiohttp.ClientSession) -> None:
        """Decisions/s of 1, 2 and 3 processes on one database: one delivery for each of N
        distinct MRs, round-robin, until the record holds N verdicts."""
        count = 60 if self.quick else 300
        rates: dict[int, float] = {}
        per_decision: dict[str, float] = {}
        for size in (1, 2, 3):
            url = self.cluster.new_database()
            bots = [
                await asyncio.to_thread(self.bot, fake, f"bot-fleet{size}-{n}", url)
                for n in range(size)
            ]
            before = await pg_counters(url)
            began = time.monotonic()
            groups = [list(range(1 + n, count + 1, size)) for n in range(size)]
            statuses = await asyncio.gather(
                *(
                    deliver(session, b.url, g, concurrency=8)
                    for b, g in zip(bots, groups, strict=True)
                )
            )
            assert all(s == 202 for group in statuses for s in group), statuses
            while await decided(url) < count:
                await asyncio.sleep(0.05)
                assert time.monotonic() - began < 300, "the fleet did not decide in time"
            elapsed = time.monotonic() - began
            rates[size] = count / elapsed
            await asyncio.to_thread(self.stop, *bots)
            if size == 1:
                # A server process reports its counters when its connection closes (or once a
                # second): the bot's are all in once it has stopped.
                await asyncio.sleep(1.5)
                after = await pg_counters(url)
                per_decision = {k: (after[k] - before[k]) / count for k in after}
        for size in (2, 3):
            self.rows.append(
                (
                    f"decisions/s, {size}-process fleet vs one process ({count} MRs, 2 cores)",
                    f"{rates[size]:.1f}/s",
                    f"{rates[1]:.1f}/s",
                    f"{rates[size] / rates[1]:.2f}",
                )
            )
        writes = per_decision["tup_inserted"] + per_decision["tup_updated"]
        self.rows.append(
            (
                "PostgreSQL per decision, one process, one delivery per MR: statements (each "
                "its own transaction and round trip; polling and heartbeats included)",
                f"{per_decision['xact_commit']:.1f}",
                "",
                f"rows inserted or updated {writes:.1f}, deleted {per_decision['tup_deleted']:.1f}",
            )
        )

    async def burst(self, fake: Process, session: aiohttp.ClientSession) -> None:
        """50 deliveries for one MR within a second over 3 processes: how many evaluations."""
        url = self.cluster.new_database()
        bots = [await asyncio.to_thread(self.bot, fake, f"bot-burst-{n}", url) for n in range(3)]
        control = FakeControl(session, fake.url)
        await control.wait_quiet()
        mark = await control.mark()
        iid = 7
        began = time.monotonic()
        for n in range(50):
            await deliver(session, bots[n % 3].url, [iid])
            await asyncio.sleep(max(0.0, began + (n + 1) * 0.019 - time.monotonic()))
        await control.wait_quiet(quiet=1.0)
        pattern = re.compile(rf"/merge_requests/{iid}$")
        reads = [
            c
            for c in await control.calls(mark)
            if c["method"] == "GET" and pattern.search(c["path"])
        ]
        self.rows.append(
            (
                "evaluations per burst: 50 deliveries for one MR in 1 s over 3 processes",
                str(len(reads)),
                "50 (one per delivery)",
                f"{len(reads) / 50:.2f}",
            )
        )
        self.stop(*bots)

    async def run(self) -> None:
        self.cluster.init()
        self.cluster.start()
        self.cluster.psql("CREATE DATABASE bot_template")
        from bot.service.schema import migrate_url

        await migrate_url(self.cluster.url("bot_template"))
        seed = 400
        fake = await asyncio.to_thread(
            start_fake, self.workdir, seed_mrs=seed, checks=[BENCH_CHECK]
        )
        self.processes.append(fake)
        async with aiohttp.ClientSession() as session:
            await self.intake(fake)
            await self.decisions(fake, session)
            await self.burst(fake, session)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.cluster.destroy()


def table(rows: list[tuple[str, str, str, str]], seconds: float, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run on {when} with `{command}` ({seconds:.0f} s), {os.cpu_count()} cores.",
        "",
        "| figure | measured | baseline (same run) | ratio |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, writes nothing")
    parser.add_argument("--output", type=Path, help="file whose fleet block is rewritten")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        run = Run(Path(folder), args.quick)
        try:
            asyncio.run(run.run())
        finally:
            run.close()
    command = "python -m bench.fleet" + (" --quick" if args.quick else "")
    block = table(run.rows, time.monotonic() - began, command)
    print(block)
    target = args.output or (None if args.quick else Path("BENCHMARKS.md"))
    if target is not None:
        text = target.read_text()
        if START in text:
            head, rest = text.split(START, 1)
            text = head + START + "\n" + block + "\n" + END + rest.split(END, 1)[1]
        else:
            text += f"\n{START}\n{block}\n{END}\n"
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sweep cost: requests and time for the start-up reconciliation sweep over 100, 1,000 and 10,000
open MRs whose checks already show the right verdict (nothing to repair).

Each size gets its own fake GitLab (seeded with every check already `passed`) and its own bot
with PROJECTS=acme/app. Time and counts come from the bot's `sweep_finished` log event (so the bot
runs at LOG_LEVEL=info here, its default); requests are counted at the fake. The sweep's request
budget (SWEEP_BUDGET) is lifted so the figure is the bot's own cost, and the time the default
budget would take is worked out from the request count.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from typing import Any

from bench.harness import BENCH_CHECK, FakeControl, Harness
from bench.procs import Process, start_bot, start_fake
from bench.report import Figure, judge

DEFAULT_BUDGET = 5.0  # bot/config.py's SWEEP_BUDGET default, requests per second


def sweep_available() -> bool:
    return importlib.util.find_spec("bot.service.sweep") is not None


async def _sweep_event(bot: Process, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    offset = 0
    pending = b""
    while time.monotonic() < deadline:
        if not bot.alive():
            raise RuntimeError(f"the bot exited: {bot.stderr_tail()}")
        with bot.stderr_path.open("rb") as stream:
            stream.seek(offset)
            chunk = stream.read()
        offset += len(chunk)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "sweep_finished":
                return entry
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no sweep_finished event within {limit:g} s")


async def _one(h: Harness, size: int) -> dict[str, Any]:
    fake = await h.start(
        start_fake,
        name=f"fake-sweep-{size}",
        seed_mrs=size,
        checks=[BENCH_CHECK],
        seed_status="passed",
    )
    bot = None
    try:
        bot = await h.start(
            start_bot,
            name=f"bot-sweep-{size}",
            gitlab_url=fake.url,
            policy_dir=h.policy_dir,
            log_level="info",
            env={"PROJECTS": "acme/app", "RECONCILE_INTERVAL": "3600", "SWEEP_BUDGET": "1000000"},
        )
        start_cpu = bot.cpu_seconds()
        event = await _sweep_event(bot, limit=120 + size / 50)
        cpu = bot.cpu_seconds() - start_cpu
        control = FakeControl(h.session, fake.url)
        await control.wait_quiet(quiet=0.2)
        stats = await control.stats()
    finally:
        if bot is not None:
            h.stop(bot)
        h.stop(fake)
    by_route = stats["by_route"]
    requests = int(stats["calls"]) - int(by_route.get("GET /version", 0))
    writes = sum(n for route, n in by_route.items() if not route.startswith("GET "))
    return {
        "size": size,
        "seconds": float(event.get("duration", 0.0)),
        "merge_requests": int(event.get("merge_requests", 0)),
        "repaired": int(event.get("repaired", 0)),
        "requests": requests,
        "writes": writes,
        "cpu": cpu,
    }


async def run(h: Harness) -> None:
    sizes = (100,) if h.options.quick else h.options.sweep_sizes
    if not sweep_available():
        h.figures.append(
            Figure(
                name="sweep cost",
                measured="pending",
                baseline="—",
                ratio="—",
                spread="—",
                target="linear; report requests/MR",
                verdict="pending",
                notes=["bot/sweep.py does not exist yet: nothing to measure."],
            )
        )
        return
    results = [await _one(h, size) for size in sizes]
    smallest = results[0]
    per_mr_time = [r["seconds"] / r["size"] for r in results]
    per_mr_requests = [r["requests"] / r["size"] for r in results]
    linear = max(per_mr_requests) <= 1.1 * min(per_mr_requests) and (
        len(results) < 2 or per_mr_time[-1] <= 1.5 * per_mr_time[-2]
    )
    clean = all(r["repaired"] == 0 and r["writes"] == 0 for r in results)
    covered = all(r["merge_requests"] == r["size"] for r in results)
    h.facts["sweep"] = results
    measured = "; ".join(
        f"{r['size']:,}: {r['requests']:,} req, {r['seconds']:.1f} s" for r in results
    )
    largest = results[-1]
    requests_text = ", ".join(f"{x:.2f}" for x in per_mr_requests)
    time_text = ", ".join(f"{x * 1000:.1f}" for x in per_mr_time)
    cpu_text = ", ".join(f"{r['cpu'] / r['size'] * 1000:.2f}" for r in results)
    notes = [
        f"Per MR: {requests_text} requests and {time_text} ms (by size); bot CPU "
        f"{cpu_text} ms per MR. "
        f"Repaired {sum(r['repaired'] for r in results)}, writes "
        f"{sum(r['writes'] for r in results)}; every open MR swept: {covered}. "
        "SWEEP_BUDGET lifted; at the default budget of "
        f"{DEFAULT_BUDGET:g} requests/s the {largest['size']:,}-MR sweep would take "
        f"{largest['requests'] / DEFAULT_BUDGET / 3600:.1f} h."
    ]
    h.figures.append(
        Figure(
            name="sweep cost",
            measured=measured,
            baseline=f"{smallest['size']} MRs: {per_mr_time[0] * 1000:.1f} ms/MR",
            ratio=f"{per_mr_time[-1] / per_mr_time[0]:.2f}x time/MR at {largest['size']:,}",
            spread="1 run per size",
            target="linear; report requests/MR",
            verdict=judge(linear and clean and covered),
            notes=notes,
        )
    )

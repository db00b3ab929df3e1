"""Coalescing (50 deliveries for one MR within 1 s → how many evaluations) and the bot's CPU cost
of one whole decision (a burst of deliveries for distinct undecided MRs, GitLab answering at once).

An evaluation is counted at the fake: each one reads the MR itself exactly once.
"""

from __future__ import annotations

import re

from bench.harness import FakeControl, Harness
from bench.load import deliver
from bench.procs import Process
from bench.report import Figure, judge, median, spread

DELIVERIES = 50
WINDOW = 1.0
GITLAB_LATENCY = 0.02
MAX_EVALUATIONS = 3


async def _evaluations(control: FakeControl, mark: int, iid: int) -> int:
    own = re.compile(rf"/merge_requests/{iid}$")
    return sum(
        1 for c in await control.calls(mark) if c["method"] == "GET" and own.search(c["path"])
    )


async def _burst(h: Harness, bot_url: str, control: FakeControl, iid: int, paced: bool) -> int:
    mark = await control.mark()
    interval = WINDOW / DELIVERIES if paced else 0.0
    statuses = await deliver(
        h.session, bot_url, [iid] * DELIVERIES, concurrency=DELIVERIES, interval=interval
    )
    if any(s != 202 for s in statuses):
        raise RuntimeError(f"deliveries answered {sorted(set(statuses))}")
    await control.wait_quiet(quiet=0.3)
    return await _evaluations(control, mark, iid)


async def run(h: Harness) -> None:
    _fake, bot, control = await h.main()
    await control.wait_quiet(quiet=0.2)
    quick = h.options.quick
    repeats = 1 if quick else h.options.repeats
    iids = iter(h.ranges.coalescing)
    await control.set_latency(GITLAB_LATENCY)
    paced = [await _burst(h, bot.url, control, next(iids), True) for _ in range(repeats)]
    burst = (
        [] if quick else [await _burst(h, bot.url, control, next(iids), False) for _ in range(2)]
    )
    await control.set_latency(0.0)
    worst = max(paced)
    notes = [
        f"{DELIVERIES} Merge Request Hooks for one MR, one every {WINDOW / DELIVERIES * 1000:.0f}"
        f" ms (spread over {WINDOW:g} s), GitLab answering in {GITLAB_LATENCY * 1000:.0f} ms; "
        "evaluations counted as reads of the MR at the fake."
    ]
    if burst:
        notes.append(f"All {DELIVERIES} at once instead: {', '.join(map(str, burst))} evaluations.")
    h.figures.append(
        Figure(
            name="coalescing",
            measured=f"{median(paced):.0f} evaluations for {DELIVERIES} deliveries in {WINDOW:g} s",
            baseline=f"without coalescing: {DELIVERIES}",
            ratio=f"{median(paced) / DELIVERIES:.2f}x deliveries",
            spread=spread(paced, "{:.0f}", " evaluations"),
            target=f"≤ {MAX_EVALUATIONS} evaluations",
            verdict=judge(worst <= MAX_EVALUATIONS),
            notes=notes,
        )
    )
    await _decision_cpu(h, bot, control)


async def _decision_cpu(h: Harness, bot: Process, control: FakeControl) -> None:
    """Bot CPU per complete decision: intake + 4 reads + evaluation + POST + record + metrics."""
    iids = list(h.ranges.batch)
    await control.wait_quiet(quiet=0.2)
    mark = await control.mark()
    start_cpu = bot.cpu_seconds()
    statuses = await deliver(h.session, bot.url, iids, concurrency=32)
    await control.wait_quiet(quiet=0.3)
    cpu = (bot.cpu_seconds() - start_cpu) / len(iids)
    calls = await control.calls(mark)
    posts = sum(1 for c in calls if c["method"] == "POST")
    h.facts["bot_cpu_per_decision"] = cpu
    bare = h.facts.get("bare_cpu_per_delivery")
    h.figures.append(
        Figure(
            name="bot CPU per decision",
            measured=f"{cpu * 1000:.2f} ms CPU",
            baseline=f"bare app per delivery {bare * 1000:.2f} ms" if bare else "—",
            ratio=f"{cpu / bare:.1f}x bare delivery" if bare else "—",
            spread="1 run",
            target="report",
            verdict="report",
            notes=[
                f"{len(iids)} deliveries for distinct undecided MRs as fast as 32 connections go,"
                f" GitLab answering at once; bot process CPU (user+system) divided by "
                f"decisions. {posts} statuses posted, deliveries answered "
                f"{sorted(set(statuses))}. Bounds one core at ≈{1 / cpu:,.0f} decisions/s."
            ],
        )
    )

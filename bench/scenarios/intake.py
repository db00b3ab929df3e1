"""Intake: deliveries/s acknowledged and time to 202, the bot beside the bare app, same load.

The fake GitLab answers in 20 ms, so the bot evaluates the MRs it is told about while the load
runs (deliveries rotate over distinct MRs): its intake competes with real evaluations, as in
production.
"""

from __future__ import annotations

import asyncio

from bench.harness import Harness
from bench.load import LoadResult, have_wrk, payload_template, run_aiohttp, run_wrk
from bench.procs import Process
from bench.report import Figure, judge, median, spread

CONNECTIONS = 32
PACE_MS = 50  # paced runs: each of the 32 connections waits 50 ms between deliveries
GITLAB_LATENCY = 0.02
THROUGHPUT_TARGET = 0.6
P99_TARGET_MS = 10.0


def use_wrk(h: Harness) -> bool:
    if h.options.loadgen == "wrk":
        return True
    return h.options.loadgen == "auto" and have_wrk()


async def load(
    h: Harness, target: Process, *, duration: float, delay_ms: float = 0.0
) -> LoadResult:
    iids = h.ranges.intake
    kwargs = dict(
        connections=CONNECTIONS,
        duration=duration,
        first_iid=iids.start,
        iid_count=len(iids),
        delay_ms=delay_ms,
    )
    if use_wrk(h):
        return await asyncio.to_thread(run_wrk, target.url, h.workdir, **kwargs)
    return await run_aiohttp(target.url, **kwargs)


def _evaluations(stats: dict) -> int:
    return int(stats["by_route"].get("GET /projects/:id/merge_requests/:merge_request_iid", 0))


async def run(h: Harness) -> None:
    _fake, bot, control = await h.main()
    bare = await h.bare()
    quick = h.options.quick
    duration = 1.0 if quick else h.options.duration
    repeats = 1 if quick else h.options.repeats
    await control.set_latency(GITLAB_LATENCY)
    if not quick:  # warm both up (imports, connection pools, first evaluations)
        for target in (bare, bot):
            await load(h, target, duration=1.0)
        await control.wait_quiet()

    runs: dict[str, list[LoadResult]] = {"bare": [], "bot": []}
    cpu: dict[str, list[float]] = {"bare": [], "bot": []}
    evaluations = 0
    for repeat in range(repeats):
        for target in (bare, bot) if repeat % 2 == 0 else (bot, bare):
            before = _evaluations(await control.stats())
            start_cpu = target.cpu_seconds()
            result = await load(h, target, duration=duration)
            cpu[target.name].append((target.cpu_seconds() - start_cpu) / max(1, result.requests))
            runs[target.name].append(result)
            if target is bot:
                evaluations += _evaluations(await control.stats()) - before
                await control.wait_quiet(quiet=0.2)

    paced: dict[str, list[LoadResult]] = {"bare": [], "bot": []}
    for repeat in range(repeats):
        for target in (bare, bot) if repeat % 2 == 0 else (bot, bare):
            paced[target.name].append(await load(h, target, duration=duration, delay_ms=PACE_MS))
            if target is bot:
                await control.wait_quiet(quiet=0.2)
    await control.set_latency(0.0)

    tool = runs["bot"][0].tool
    bot_rps = [r.rps for r in runs["bot"]]
    bare_rps = [r.rps for r in runs["bare"]]
    ratios = [b / a for b, a in zip(bot_rps, bare_rps, strict=True) if a]
    ratio = median(ratios)
    bad = sum(r.non2xx + r.errors for r in runs["bot"] + paced["bot"])
    size = len(payload_template())
    h.facts.update(
        intake_rps_bot=median(bot_rps),
        intake_rps_bare=median(bare_rps),
        bot_cpu_per_delivery=median(cpu["bot"]),
        bare_cpu_per_delivery=median(cpu["bare"]),
    )
    h.figures.append(
        Figure(
            name="intake throughput",
            measured=f"{median(bot_rps):,.0f} deliveries/s",
            baseline=f"bare app {median(bare_rps):,.0f}/s",
            ratio=f"{ratio:.2f}x bare",
            spread=spread(ratios, "{:.2f}", "x"),
            target=f"≥ {THROUGHPUT_TARGET} x bare",
            verdict=judge(ratio >= THROUGHPUT_TARGET and bad == 0),
            notes=[
                f"{tool}, {CONNECTIONS} connections as fast as they are answered, {duration:g} s "
                f"per run, bot and bare app alternating; each delivery a {size:,}-byte Merge "
                f"Request Hook (tests/samples) for one of {len(h.ranges.intake)} MRs in turn. "
                f"The fake GitLab answers in {GITLAB_LATENCY * 1000:.0f} ms, so the bot ran "
                f"{evaluations:,} evaluations during its runs. Non-2xx or failed: {bad}. "
                f"CPU per acknowledged delivery: bot {median(cpu['bot']) * 1e6:,.0f} µs "
                f"(evaluations included), bare {median(cpu['bare']) * 1e6:,.0f} µs. At "
                f"saturation p50/p99: bot {median([r.p50_ms for r in runs['bot']]):.1f}/"
                f"{median([r.p99_ms for r in runs['bot']]):.1f} ms, bare "
                f"{median([r.p50_ms for r in runs['bare']]):.1f}/"
                f"{median([r.p99_ms for r in runs['bare']]):.1f} ms."
            ],
        )
    )
    p50 = median([r.p50_ms for r in paced["bot"]])
    p99s = [r.p99_ms for r in paced["bot"]]
    bare_p50 = median([r.p50_ms for r in paced["bare"]])
    bare_p99 = median([r.p99_ms for r in paced["bare"]])
    p99 = median(p99s)
    rate = median([r.rps for r in paced["bot"]])
    h.figures.append(
        Figure(
            name="intake latency",
            measured=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            baseline=f"bare app p50 {bare_p50:.1f} ms, p99 {bare_p99:.1f} ms",
            ratio=f"p99 {p99 / bare_p99:.2f}x bare" if bare_p99 else "—",
            spread=spread(p99s, "{:.1f}", " ms (p99)"),
            target=f"p99 ≤ {P99_TARGET_MS:g} ms",
            verdict=judge(p99 <= P99_TARGET_MS),
            notes=[
                f"{tool}, {CONNECTIONS} connections each pausing {PACE_MS} ms between deliveries "
                f"(≈{rate:,.0f} deliveries/s), {duration:g} s per run, while the bot evaluates "
                f"against a {GITLAB_LATENCY * 1000:.0f} ms GitLab; time from request written to "
                "202 read, measured by the load generator."
            ],
        )
    )

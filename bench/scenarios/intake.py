"""Intake: deliveries/s acknowledged and time to 202, the bot beside the bare app, same load.

The fake GitLab answers in 20 ms, so the bot evaluates the MRs it is told about while the load
runs (deliveries rotate over distinct MRs): its intake competes with real evaluations, as in
production. The bot runs at LOG_LEVEL=warning; one more row measures the intake path alone with
the default LOG_LEVEL=info, which writes a log line per delivery.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bench.harness import QUIET_BOT, FakeControl, Harness
from bench.load import LoadResult, have_wrk, payload_template, run_aiohttp, run_wrk
from bench.procs import Process, start_bot
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
    h: Harness, target: Process, *, duration: float, delay_ms: float = 0.0, mrs: int = 0
) -> LoadResult:
    """Deliveries rotating over the first `mrs` MRs of the intake range (0: all of it)."""
    iids = h.ranges.intake
    kwargs = dict(
        connections=CONNECTIONS,
        duration=duration,
        first_iid=iids.start,
        iid_count=mrs or len(iids),
        delay_ms=delay_ms,
    )
    if use_wrk(h):
        return await asyncio.to_thread(run_wrk, target.url, h.workdir, **kwargs)
    return await run_aiohttp(target.url, **kwargs)


def _evaluations(stats: dict) -> int:
    return int(stats["by_route"].get("GET /projects/:id/merge_requests/:merge_request_iid", 0))


@dataclass
class Runs:
    """Load runs of the bot and of the bare app under the same load, alternating."""

    bot: list[LoadResult] = field(default_factory=list)
    bare: list[LoadResult] = field(default_factory=list)
    bot_cpu: list[float] = field(default_factory=list)  # seconds per delivery
    bare_cpu: list[float] = field(default_factory=list)
    evaluations: int = 0

    @property
    def ratios(self) -> list[float]:
        return [b.rps / a.rps for b, a in zip(self.bot, self.bare, strict=True) if a.rps]

    @property
    def failed(self) -> int:
        return sum(r.non2xx + r.errors for r in self.bot + self.bare)


async def _measure(
    h: Harness,
    bot: Process,
    bare: Process,
    control: FakeControl,
    reuse_bare: Runs | None = None,
    **load_args: Any,
) -> Runs:
    """`reuse_bare` (quick mode): the bare app's runs under a load that differs only in the MR
    iids, which the bare app never looks at."""
    quick = h.options.quick
    duration = 1.0 if quick else h.options.duration
    runs = Runs()
    if reuse_bare is not None:
        runs.bare, runs.bare_cpu = reuse_bare.bare, reuse_bare.bare_cpu
    for repeat in range(1 if quick else h.options.repeats):
        targets = (bare, bot) if repeat % 2 == 0 else (bot, bare)
        for target in targets if reuse_bare is None else (bot,):
            before = _evaluations(await control.stats())
            start_cpu = target.cpu_seconds()
            result = await load(h, target, duration=duration, **load_args)
            cpu = (target.cpu_seconds() - start_cpu) / max(1, result.requests)
            if target is bot:
                runs.bot.append(result)
                runs.bot_cpu.append(cpu)
                runs.evaluations += _evaluations(await control.stats()) - before
                await control.wait_quiet(quiet=0.2)
            else:
                runs.bare.append(result)
                runs.bare_cpu.append(cpu)
    return runs


def _throughput(name: str, runs: Runs, target: str, notes: list[str]) -> Figure:
    ratio = median(runs.ratios)
    return Figure(
        name=name,
        measured=f"{median([r.rps for r in runs.bot]):,.0f} deliveries/s",
        baseline=f"bare app {median([r.rps for r in runs.bare]):,.0f}/s",
        ratio=f"{ratio:.2f}x bare",
        spread=spread(runs.ratios, "{:.2f}", "x"),
        target=target,
        verdict=judge(ratio >= THROUGHPUT_TARGET and runs.failed == 0),
        notes=notes,
    )


async def run(h: Harness) -> None:
    fake, bot, control = await h.main()
    bare = await h.bare()
    quick = h.options.quick
    duration = 1.0 if quick else h.options.duration
    await control.set_latency(GITLAB_LATENCY)
    if not quick:  # warm both up (imports, connection pools, first evaluations)
        for target in (bare, bot):
            await load(h, target, duration=1.0)
        await control.wait_quiet()
    busy = await _measure(h, bot, bare, control)
    single = await _measure(h, bot, bare, control, busy if quick else None, mrs=1)
    paced = await _measure(h, bot, bare, control, delay_ms=PACE_MS)
    # The same intake path with the default LOG_LEVEL (info): one JSON log line per delivery.
    chatty = await h.start(
        start_bot,
        gitlab_url=fake.url,
        policy_dir=h.policy_dir,
        name="bot-info",
        log_level="info",
        env=QUIET_BOT,
    )
    try:
        logged = await _measure(h, chatty, bare, control, busy if quick else None, mrs=1)
    finally:
        h.stop(chatty)
    await control.set_latency(0.0)

    tool = busy.bot[0].tool
    size = len(payload_template())
    h.facts.update(
        intake_rps_bot=median([r.rps for r in busy.bot]),
        intake_rps_bare=median([r.rps for r in busy.bare]),
        bare_cpu_per_delivery=median(single.bare_cpu),
        bot_cpu_per_delivery=median(single.bot_cpu),
    )
    target = f"≥ {THROUGHPUT_TARGET} x bare"
    h.figures.append(
        _throughput(
            "intake throughput",
            busy,
            target,
            [
                f"{tool}, {CONNECTIONS} connections as fast as they are answered, {duration:g} s "
                f"per run, bot and bare app alternating; each delivery a {size:,}-byte Merge "
                f"Request Hook (tests/samples) for one of {len(h.ranges.intake)} MRs in turn. "
                f"The fake GitLab answers in {GITLAB_LATENCY * 1000:.0f} ms, so the bot ran "
                f"{busy.evaluations:,} evaluations during its runs, in the same process and "
                f"on the same core as its intake. Non-2xx or failed: {busy.failed}. CPU per "
                f"acknowledged delivery: bot {median(busy.bot_cpu) * 1e6:,.0f} µs (evaluations "
                f"included), bare {median(busy.bare_cpu) * 1e6:,.0f} µs. At saturation "
                f"p50/p99: bot {median([r.p50_ms for r in busy.bot]):.1f}/"
                f"{median([r.p99_ms for r in busy.bot]):.1f} ms, bare "
                f"{median([r.p50_ms for r in busy.bare]):.1f}/"
                f"{median([r.p99_ms for r in busy.bare]):.1f} ms."
            ],
        )
    )
    h.figures.append(
        _throughput(
            "intake throughput, one MR",
            single,
            target,
            [
                "The same load, every delivery for the same MR: coalescing leaves "
                f"{single.evaluations:,} evaluations, so this is the intake path alone. CPU per "
                f"delivery: bot {median(single.bot_cpu) * 1e6:,.0f} µs, bare "
                f"{median(single.bare_cpu) * 1e6:,.0f} µs. Non-2xx or failed: {single.failed}."
            ],
        )
    )
    logged_ratio = median(logged.ratios)
    h.figures.append(
        Figure(
            name="intake throughput, one MR, LOG_LEVEL=info",
            measured=f"{median([r.rps for r in logged.bot]):,.0f} deliveries/s",
            baseline=f"bare app {median([r.rps for r in logged.bare]):,.0f}/s",
            ratio=f"{logged_ratio:.2f}x bare",
            spread=spread(logged.ratios, "{:.2f}", "x"),
            target="report",
            verdict="report",
            notes=[
                "The one-MR load against a second bot started with the default LOG_LEVEL=info "
                "instead of warning: it writes one JSON line (delivery_queued, with the "
                "delivery's ids) to stderr, here a file, per delivery, which the bare app does "
                f"not. CPU per delivery: bot {median(logged.bot_cpu) * 1e6:,.0f} µs, bare "
                f"{median(logged.bare_cpu) * 1e6:,.0f} µs. Non-2xx or failed: {logged.failed}."
            ],
        )
    )
    p50 = median([r.p50_ms for r in paced.bot])
    p99s = [r.p99_ms for r in paced.bot]
    p99 = median(p99s)
    bare_p50 = median([r.p50_ms for r in paced.bare])
    bare_p99 = median([r.p99_ms for r in paced.bare])
    rate = median([r.rps for r in paced.bot])
    h.figures.append(
        Figure(
            name="intake latency",
            measured=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            baseline=f"bare app p50 {bare_p50:.1f} ms, p99 {bare_p99:.1f} ms",
            ratio=f"p99 {p99 / bare_p99:.2f}x bare" if bare_p99 else "—",
            spread=spread(p99s, "{:.1f}", " ms (p99)"),
            target=f"p99 ≤ {P99_TARGET_MS:g} ms",
            verdict=_latency_verdict(p99s, paced.failed),
            notes=[
                f"{tool}, {CONNECTIONS} connections each pausing {PACE_MS} ms between deliveries "
                f"(≈{rate:,.0f} deliveries/s), {duration:g} s per run, deliveries for "
                f"{len(h.ranges.intake)} MRs while the bot evaluates them against a "
                f"{GITLAB_LATENCY * 1000:.0f} ms GitLab ({paced.evaluations:,} evaluations); "
                "time from request written to 202 read, measured by the load generator. "
                f"p99 per run: bot {', '.join(f'{x:.1f}' for x in p99s)} ms, bare app "
                f"{', '.join(f'{r.p99_ms:.1f}' for r in paced.bare)} ms (the verdict counts "
                "every run, not only the median)."
            ],
        )
    )


def _latency_verdict(p99s: list[float], failed: int) -> str:
    """met only when every run's p99 is within the target; otherwise say how many missed."""
    missed = sum(1 for x in p99s if x > P99_TARGET_MS)
    if failed or missed * 2 > len(p99s):
        return "MISSED"
    if missed:
        return f"MISSED in {missed} of {len(p99s)} runs"
    return "met"

"""Memory: the bot's resident set with 10,000 distinct MRs queued behind a slow GitLab, beside the
same bot idle (after start-up and a few evaluations), both in this run.

A fresh bot is started for it, so the figure does not carry what earlier scenarios left behind.
The queue depth is read from the bot's own /metrics when it has them.
"""

from __future__ import annotations

import asyncio
import re

from bench.harness import QUIET_BOT, Harness
from bench.load import deliver
from bench.procs import Process, start_bot
from bench.report import Figure, judge

SLOW_GITLAB = 5.0  # seconds per GitLab answer while the deliveries arrive
LIMIT_BYTES = 150 * 1024 * 1024
FIRST_IID = 200_001  # MRs the fake does not have: nothing is decided while we measure


async def _queue_depth(h: Harness, bot: Process) -> int | None:
    try:
        async with h.session.get(f"{bot.url}/metrics") as answer:
            if answer.status != 200:
                return None
            text = await answer.text()
    except Exception:
        return None
    match = re.search(r"^gitlab_status_bot_queue_depth (\S+)$", text, re.MULTILINE)
    return int(float(match[1])) if match else None


async def run(h: Harness) -> None:
    fake, _bot, control = await h.main()
    count = 500 if h.options.quick else h.options.memory_mrs
    await control.set_latency(0.0)
    bot = await h.start(
        start_bot,
        name="bot-memory",
        gitlab_url=fake.url,
        policy_dir=h.policy_dir,
        env=QUIET_BOT,
    )
    try:
        warm = list(h.ranges.batch)[:20]
        await deliver(h.session, bot.url, warm, concurrency=8)
        await control.wait_quiet(quiet=0.3)
        await asyncio.sleep(0.2)
        idle = bot.rss_bytes()
        await control.set_latency(SLOW_GITLAB)
        iids = range(FIRST_IID, FIRST_IID + count)
        statuses = await deliver(h.session, bot.url, iids, concurrency=32)
        await asyncio.sleep(0.5)
        loaded = bot.rss_bytes()
        peak = bot.peak_rss_bytes()
        depth = await _queue_depth(h, bot)
    finally:
        h.stop(bot)
        await control.set_latency(0.0)
    accepted = sum(1 for s in statuses if s == 202)
    per_mr = (loaded - idle) / count
    mib = 1024 * 1024
    # 10,000 MRs is the figure's premise; a smaller (quick) run is scaled up linearly.
    projected = idle + per_mr * 10_000
    h.facts.update(rss_idle=idle, rss_per_queued_mr=per_mr)
    h.figures.append(
        Figure(
            name=f"memory, {count:,} MRs queued",
            measured=f"{loaded / mib:.0f} MiB RSS (peak {peak / mib:.0f})",
            baseline=f"same bot idle {idle / mib:.0f} MiB",
            ratio=f"{loaded / idle:.2f}x idle",
            spread="1 run",
            target="≤ 150 MB at 10,000",
            verdict=judge(projected <= LIMIT_BYTES),
            notes=[
                f"{count:,} Merge Request Hooks for distinct MRs ({accepted:,} answered 202) while "
                f"GitLab takes {SLOW_GITLAB:g} s per answer, so they wait in the queue "
                f"(queue depth from /metrics: {depth if depth is not None else 'n/a'}). "
                f"{per_mr:,.0f} bytes per queued MR"
                + (f"; projected to 10,000: {projected / mib:.0f} MiB." if count != 10_000 else ".")
            ],
        )
    )

"""Decision latency and API economy: one delivery for an undecided MR → the status POST stored
at the fake GitLab, with L seconds added to every GitLab call.

Latency runs from just before the delivery is sent to the moment the fake finished answering the
status POST (its CLOCK_MONOTONIC timestamp; the same clock as ours). The baseline is an "ideal
client" in this process that is also correct on a real GitLab: the first look at a head reads
the MR (and its status checks) first, then the facts the policy needs (the diffs, the approvals
and the newest diff version that says when GitLab recorded the head), then posts — facts read
before the MR read might describe the previous head (README, "What the bot will not guess").
Against the same fake, timed the same way: the floor any correct bot could reach.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.harness import FakeControl, Harness, mr_calls, read_rounds
from bench.load import delivery_headers
from bench.report import Figure, judge, median
from tests.fakegitlab import sha_for
from tests.payloads import merge_request_hook

LATENCIES = (0.02, 0.05)
SETTLE = 0.15  # quiet time after which an evaluation counts as over


def _is_status_post(call: dict[str, Any]) -> bool:
    return call["method"] == "POST" and call["path"].endswith("/status_check_responses")


async def _wait_post(control: FakeControl, mark: int, iid: int, limit: float = 15.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for call in mr_calls(await control.calls(mark), iid):
            if _is_status_post(call) and call["finished"]:
                return call
        await asyncio.sleep(0.005)
    raise TimeoutError(f"no status POST for MR !{iid} within {limit:g} s")


async def _bot_sample(
    h: Harness, bot_url: str, control: FakeControl, iid: int, latency: float
) -> dict[str, Any]:
    # As GitLab sends it: the MR's real head (tests.fakegitlab.seed names it seed/<iid>).
    body = json.dumps(
        merge_request_hook(
            project_id=1, project_path="acme/app", iid=iid, sha=sha_for(f"seed/{iid}")
        )
    ).encode()
    mark = await control.mark()
    sent = time.monotonic()
    async with h.session.post(
        f"{bot_url}/webhook", data=body, headers=delivery_headers()
    ) as answer:
        await answer.read()
        acked = time.monotonic()
        if answer.status != 202:
            raise RuntimeError(f"delivery answered {answer.status}")
    post = await _wait_post(control, mark, iid)
    await control.wait_quiet(quiet=SETTLE)
    calls = mr_calls(await control.calls(mark), iid)
    reads = [c for c in calls if c["method"] == "GET"]
    writes = [c for c in calls if c["method"] != "GET"]
    # The same delivery again: the verdict is unchanged, so nothing may be written.
    mark = await control.mark()
    async with h.session.post(
        f"{bot_url}/webhook", data=body, headers=delivery_headers()
    ) as answer:
        await answer.read()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = mr_calls(await control.calls(mark), iid)
        if len([c for c in again if c["method"] == "GET" and c["finished"]]) >= len(reads):
            break
        await asyncio.sleep(0.01)
    await control.wait_quiet(quiet=SETTLE + 2 * latency)
    again = mr_calls(await control.calls(mark), iid)
    return {
        "latency": post["finished"] - sent,
        "arrived": post["started"] - sent,
        "ack": acked - sent,
        "reads": len(reads),
        "rounds": read_rounds(reads),
        "writes": len(writes),
        "unchanged_reads": len([c for c in again if c["method"] == "GET"]),
        "unchanged_rounds": read_rounds([c for c in again if c["method"] == "GET"]),
        "unchanged_writes": len([c for c in again if c["method"] != "GET"]),
    }


async def _ideal_sample(
    session: aiohttp.ClientSession, h: Harness, fake_url: str, control: FakeControl, iid: int
) -> float:
    base = f"{fake_url}/api/v4/projects/1/merge_requests/{iid}"
    headers = h.gitlab_session_headers()

    async def get(path: str) -> Any:
        async with session.get(base + path, headers=headers) as answer:
            answer.raise_for_status()
            return await answer.json()

    mark = await control.mark()
    sent = time.monotonic()
    mr, checks = await asyncio.gather(get(""), get("/status_checks"))
    await asyncio.gather(get("/diffs"), get("/approvals"), get("/versions?per_page=1"))
    body = {"external_status_check_id": checks[0]["id"], "sha": mr["sha"], "status": "passed"}
    async with session.post(f"{base}/status_check_responses", json=body, headers=headers) as answer:
        answer.raise_for_status()
    post = await _wait_post(control, mark, iid)
    return post["finished"] - sent


async def run(h: Harness) -> None:
    fake, bot, control = await h.main()
    await control.wait_quiet(quiet=0.2)
    quick = h.options.quick
    latencies = LATENCIES[:1] if quick else LATENCIES
    samples = 2 if quick else 12
    iids = iter(h.ranges.decision)
    economy: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as ideal_session:
        for latency in latencies:
            await control.set_latency(latency)
            bot_runs: list[dict[str, Any]] = []
            ideal: list[float] = []
            for _ in range(samples):
                bot_runs.append(await _bot_sample(h, bot.url, control, next(iids), latency))
                ideal.append(await _ideal_sample(ideal_session, h, fake.url, control, next(iids)))
            economy.extend(bot_runs)
            values = [r["latency"] * 1000 for r in bot_runs]
            med = median(values)
            ideal_med = median([x * 1000 for x in ideal])
            target = 3.5 * latency * 1000 + 10  # the correct ideal reads in 2 rounds: 3L
            h.figures.append(
                Figure(
                    name=f"decision latency, L = {latency * 1000:.0f} ms",
                    measured=f"median {med:.0f} ms (max {max(values):.0f})",
                    baseline=f"ideal client {ideal_med:.0f} ms",
                    ratio=f"{med / ideal_med:.2f}x ideal" if ideal_med else "—",
                    spread=f"{min(values):.0f}-{max(values):.0f} ms over {len(values)} MRs",
                    target=f"median ≤ {target:.0f} ms",
                    verdict=judge(med <= target),
                    notes=[
                        f"{len(values)} MRs, one delivery each, one at a time; the fake adds "
                        f"{latency * 1000:.0f} ms to every call. Delivery sent → status POST "
                        "answered by the fake (stored). The POST reached the fake after "
                        f"{median([r['arrived'] * 1000 for r in bot_runs]):.0f} ms (median); "
                        f"the 202 came after {median([r['ack'] * 1000 for r in bot_runs]):.1f} "
                        "ms. Ideal client: the MR and its status checks, then the same 3 facts "
                        "in a second round (a first look at a head), then the POST."
                    ],
                )
            )
    await control.set_latency(0.0)
    reads = [r["reads"] for r in economy]
    rounds = [r["rounds"] for r in economy]
    writes = [r["writes"] for r in economy]
    unchanged_writes = [r["unchanged_writes"] for r in economy]
    unchanged_reads = [r["unchanged_reads"] for r in economy]
    unchanged_rounds = [r["unchanged_rounds"] for r in economy]
    ok = (
        max(rounds) <= 2
        and max(writes) <= 1
        and max(unchanged_writes) == 0
        and max(unchanged_rounds) <= 1
    )
    h.facts["requests_per_decision"] = median(reads) + median(writes)
    h.figures.append(
        Figure(
            name="API economy",
            measured=(
                f"{median(reads):.0f} reads in {max(rounds)} rounds + {median(writes):.0f} write; "
                f"unchanged: {median(unchanged_reads):.0f} reads in {max(unchanged_rounds)} round "
                f"+ {max(unchanged_writes)} writes"
            ),
            baseline=(
                "ideal: 5 reads in 2 rounds + 1 write; unchanged: 5 reads in 1 round + 0 writes"
            ),
            ratio=f"{(median(reads) + median(writes)) / 6:.2f}x ideal requests",
            spread=(
                f"reads {min(reads)}-{max(reads)}, rounds {min(rounds)}-{max(rounds)}, "
                f"writes {min(writes)}-{max(writes)} over {len(economy)} decisions"
            ),
            target=(
                "first look ≤ 2 read rounds (+ pagination), then 1; 1 write; 0 writes unchanged"
            ),
            verdict=judge(ok),
            notes=[
                "Counted at the fake per decision of the latency runs: the policy needs the MR, "
                "its diffs and its approvals (with the newest diff version: when GitLab recorded "
                "the head), and the bot lists the MR's status checks; the first look at a head "
                "reads the facts after the MR. The project's approval settings, read once per "
                "project every 5 minutes, are not counted per MR. Then the same delivery again "
                "(the same head, verdict unchanged) and what that cost."
            ],
        )
    )

"""Load generators: `wrk` (Debian's package) with bench/wrk_webhook.lua, or an aiohttp client in
this harness process. Either way the load comes from outside the process under test.

Every delivery is a real Merge Request Hook built from tests/samples, with GitLab's headers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import WEBHOOK_SECRET
from tests.payloads import merge_request_hook

LUA_SCRIPT = Path(__file__).with_name("wrk_webhook.lua")
_MARK = 987654321  # a number that appears nowhere else in the sample, replaced by __IID__


def payload_template() -> bytes:
    """A Merge Request Hook (sample payload, project 1 acme/app) with __IID__ for the iid."""
    payload = merge_request_hook(
        project_id=1, project_path="acme/app", iid=_MARK, action="update", sha="b" * 40
    )
    text = json.dumps(payload)
    if text.count(str(_MARK)) != 1:
        raise RuntimeError("the sample payload already contains the iid placeholder number")
    return text.replace(str(_MARK), "__IID__").encode()


def delivery_headers() -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": WEBHOOK_SECRET,
    }


def body_for(template: bytes, iid: int) -> bytes:
    return template.replace(b"__IID__", str(iid).encode())


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    """What one load run saw, from the client's side."""

    tool: str
    requests: int
    seconds: float
    non2xx: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    workdir: Path,
    *,
    connections: int,
    duration: float,
    first_iid: int,
    iid_count: int,
    delay_ms: float = 0.0,
) -> LoadResult:
    """`wrk -t1` (one thread leaves the other core to the servers) against `url`/webhook.

    With `delay_ms`, each connection waits that long between requests (wrk's `delay()` hook):
    a paced load instead of as-fast-as-possible."""
    template = workdir / "payload.json"
    if not template.exists():
        template.write_bytes(payload_template())
    script = workdir / f"wrk-{int(delay_ms)}.lua"
    text = LUA_SCRIPT.read_text()
    if delay_ms > 0:
        text += f"\nfunction delay()\n  return {int(delay_ms)}\nend\n"
    script.write_text(text)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    command += ["-s", str(script), url, "--", str(template), str(first_iid), str(iid_count)]
    command += [WEBHOOK_SECRET]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(line[len("WRK_JSON ") :])
    errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return LoadResult(
        tool="wrk",
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        non2xx=int(data["non2xx"]),
        errors=int(errors),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


async def run_aiohttp(
    url: str,
    *,
    connections: int,
    duration: float,
    first_iid: int,
    iid_count: int,
    delay_ms: float = 0.0,
) -> LoadResult:
    """The same load as `run_wrk` from an aiohttp client in this (the harness) process."""
    template = payload_template()
    bodies = [body_for(template, first_iid + k) for k in range(iid_count)]
    headers = delivery_headers()
    latencies: list[float] = []
    non2xx = errors = 0
    counter = 0
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        stop_at = start + duration

        async def connection() -> None:
            nonlocal counter, non2xx, errors
            while time.perf_counter() < stop_at:
                body = bodies[counter % len(bodies)]
                counter += 1
                sent = time.perf_counter()
                try:
                    async with session.post(f"{url}/webhook", data=body, headers=headers) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            non2xx += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)

        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        tool="aiohttp",
        requests=len(latencies),
        seconds=elapsed,
        non2xx=non2xx,
        errors=errors,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms, default=0.0),
    )


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    iids: Iterable[int],
    *,
    concurrency: int = 1,
    interval: float = 0.0,
) -> list[int]:
    """Post one delivery per iid (in order, `interval` seconds apart when given, else as fast as
    `concurrency` connections allow) and return the HTTP statuses."""
    template = payload_template()
    headers = delivery_headers()
    limit = asyncio.Semaphore(concurrency)

    async def one(iid: int) -> int:
        async with limit:
            try:
                async with session.post(
                    f"{url}/webhook", data=body_for(template, iid), headers=headers
                ) as resp:
                    await resp.read()
                    return resp.status
            except (aiohttp.ClientError, TimeoutError):
                return 0

    if interval <= 0:
        return list(await asyncio.gather(*(one(iid) for iid in iids)))
    tasks = []
    start = time.monotonic()
    for n, iid in enumerate(iids):
        await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        tasks.append(asyncio.create_task(one(iid)))
    return list(await asyncio.gather(*tasks))

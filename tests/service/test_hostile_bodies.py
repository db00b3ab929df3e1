"""Hostile bodies over real sockets: gzip bombs (issue 10 item 1) and big JSON bodies (item 10).

The bot runs as a real server on 127.0.0.1; bombs are written byte by byte over raw sockets (the
aiohttp client would not send what an attacker sends), and latencies are compared with a baseline
measured in the same test (the machine is shared and noisy: ratios and generous bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import statistics
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from yarl import URL

from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import WEBHOOK_SECRET, Bot, LoopLag
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
MIB = 1 << 20


@functools.cache
def gzip_bomb(expanded_mib: int = 1024) -> bytes:
    """A valid gzip body of `expanded_mib` MiB of zeros, about 1 kB per MiB on the wire.

    Built from one deflate block repeated: after a full flush the compressor forgets its window,
    so every 1 MiB block of zeros compresses to the same bytes (no need to compress 1 GiB)."""
    chunk = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(expanded_mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, (expanded_mib * MIB) & 0xFFFFFFFF)
    return header + block * expanded_mib + compressor.flush() + trailer


def test_the_bomb_is_what_it_claims() -> None:
    bomb = gzip_bomb(8)
    assert len(zlib.decompress(bomb, 31)) == 8 * MIB
    assert len(gzip_bomb()) < 1.1 * MIB  # 1 MB on the wire, 1 GiB inflated


async def raw_post(
    bot: Bot, head: bytes, body: bytes, *, piece: int = 64 * 1024, method: bytes = b"POST"
) -> tuple[bytes, bool]:
    """POST `body` over a raw socket after the extra header lines `head`; returns the response
    bytes and whether the server closed the connection (EOF or reset after the response).

    The whole body is written (as an attacker would) unless the server hangs up first; the
    response is read meanwhile, as it may come (and the connection close) before the body ends."""
    url = URL(bot.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)

    async def read_response() -> tuple[bytes, bool]:
        response = b""
        try:
            async with asyncio.timeout(30):
                response = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in response.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                response += await reader.readexactly(length)
            async with asyncio.timeout(5):  # a kept-alive connection stays open: not closed
                return response, await reader.read(1) == b""
        except TimeoutError:
            return response, False
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return response, True

    answer = asyncio.create_task(read_response())
    writer.write(
        method + b" /webhook HTTP/1.1\r\nHost: bot\r\n" + head
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )  # fmt: skip
    try:
        for start in range(0, len(body), piece):
            if answer.done():
                break
            writer.write(body[start : start + piece])
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # the server hung up on us: what a refused bomb should get
    try:
        return await answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def healthz(bot: Bot) -> None:
    async with bot.session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200
        await resp.read()


def seed(gitlab: FakeGitLab) -> None:
    seed_project(gitlab, ["conventional-title"])
    seed_mr(gitlab, sha=SHA)


async def deliver_real(bot: Bot) -> None:
    status, answer = await bot.deliver(payloads.merge_request_hook(sha=SHA))
    assert status == 202, answer


EVENT = b"X-Gitlab-Event: Merge Request Hook\r\n"
TOKEN = b"X-Gitlab-Token: " + WEBHOOK_SECRET.encode() + b"\r\n"
GZIP = b"Content-Encoding: gzip\r\n"


# -- item 1: compressed bodies ------------------------------------------------------------------


async def test_gzip_bombs_do_not_slow_healthz_or_real_deliveries(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """Four 1 MB bombs (1 GiB each once inflated) at once with no credentials, two as webhooks
    (401 before reading) and two as status-check requests (no token to check), then three a
    second: /healthz and a real delivery keep their latency, and every bomb is refused (415) on a
    closed connection."""
    seed(gitlab)
    bomb = gzip_bomb()
    baseline_probes = [await timed(lambda: healthz(bot)) for _ in range(20)]
    baseline_deliveries = [await timed(lambda: deliver_real(bot)) for _ in range(3)]

    bombs = [
        asyncio.create_task(raw_post(bot, EVENT + GZIP, bomb)),  # webhook without a token
        asyncio.create_task(raw_post(bot, EVENT + GZIP, bomb)),
        asyncio.create_task(raw_post(bot, GZIP, bomb)),  # a "status-check request"
        asyncio.create_task(raw_post(bot, GZIP, bomb)),
    ]
    await asyncio.sleep(0.2)
    probes: list[float] = []
    deliveries: list[float] = []
    for round_ in range(24):  # about 1.5 s, with three more bombs a second meanwhile
        probes.append(await timed(lambda: healthz(bot)))
        if round_ % 4 == 0:
            deliveries.append(await timed(lambda: deliver_real(bot)))
            bombs.append(asyncio.create_task(raw_post(bot, EVENT + GZIP, bomb)))
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*bombs)

    print(
        f"healthz baseline median {statistics.median(baseline_probes) * 1000:.1f} ms "
        f"max {max(baseline_probes) * 1000:.1f} ms; under bombs median "
        f"{statistics.median(probes) * 1000:.1f} ms max {max(probes) * 1000:.1f} ms; deliveries "
        f"baseline max {max(baseline_deliveries) * 1000:.1f} ms, under bombs max "
        f"{max(deliveries) * 1000:.1f} ms; bombs answered "
        f"{[(status_of(r), closed) for r, closed in results]}"
    )
    assert max(probes) < max(0.2, 10 * max(baseline_probes)), probes
    assert statistics.median(probes) < max(0.05, 5 * statistics.median(baseline_probes)), probes
    assert max(deliveries) < max(0.3, 10 * max(baseline_deliveries)), deliveries
    for response, closed in results:
        assert status_of(response) == 415, response[:300]
        assert b"Connection: close" in response, response[:300]
        assert closed


async def test_compressed_deliveries_are_refused_with_415_even_when_valid(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """GitLab never compresses: a gzip (or deflate, br, zstd, unknown) body is a 415 however
    valid it is inside and whatever its token; identity is the uncompressed body it says."""
    seed(gitlab)
    body = json.dumps(payloads.merge_request_hook(sha=SHA)).encode()
    gitlab.reset_calls()
    for encoding in ("gzip", "deflate", "br", "zstd", "x-unknown", "identity, gzip", "GZIP"):
        status, answer = await bot.deliver(
            None, raw=zlib.compress(body), headers={"Content-Encoding": encoding}
        )
        assert status == 415, (encoding, answer)
        assert "GitLab sends deliveries uncompressed" in answer["error"]
    await asyncio.sleep(0.05)
    assert gitlab.calls == []
    status, answer = await bot.deliver(None, raw=body, headers={"Content-Encoding": "identity"})
    assert status == 202, answer


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (EVENT, 401),  # a webhook without its token
        (EVENT + b"X-Gitlab-Token: wrong\r\n", 401),
        (EVENT + TOKEN, 413),  # declared larger than MAX_BODY_BYTES
        (EVENT + TOKEN, 405),  # not a POST
    ],
    ids=["no-token", "wrong-token", "too-large", "not-a-post"],
)
async def test_a_refused_big_body_is_not_drained(bot: Bot, head: bytes, expected: int) -> None:
    """A refusal before the body is read answers at once and hangs up: it does not read (for
    up to 10 s, keeping the connection) the 64 MB the sender goes on sending."""
    body = b" " * (64 * MIB)
    started = time.perf_counter()
    method = b"PUT" if expected == 405 else b"POST"
    response, closed = await raw_post(bot, head, body, method=method)
    elapsed = time.perf_counter() - started
    assert status_of(response) == expected, response[:300]
    assert b"Connection: close" in response, response[:300]
    assert closed
    assert elapsed < 5, elapsed


# -- item 10: big bodies on the event loop ------------------------------------------------------


def padded(payload: dict[str, Any], size: int) -> bytes:
    """`payload` with an extra top-level object of many small keys, `size` bytes in all: the
    slowest JSON to parse per byte (about 70 ms per MB here), in a field the bot never reads."""
    body = json.dumps(payload).encode()
    room = size - len(body) - len(b',"padding":{}')
    keys = []
    used = 0
    number = 0
    while True:
        item = b'"%d":0' % number
        if used + len(item) + 1 > room:
            break
        keys.append(item)
        used += len(item) + 1
        number += 1
    out = body[:-1] + b',"padding":{' + b",".join(keys) + b"}}"
    return out + b" " * (size - len(out))


@pytest.mark.parametrize("event", ["Merge Request Hook", None], ids=["webhook", "status-check"])
async def test_a_10_mb_delivery_does_not_block_the_loop(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], event: str | None
) -> None:
    """A 10 MB delivery (just under MAX_BODY_BYTES, signed when a status-check request) is
    accepted and evaluated, and no loop stall it causes exceeds about 50 ms."""
    seed(gitlab)
    secret = "shared_secret"
    bot = await start_bot(status_check_secret=secret)
    payload = (
        payloads.merge_request_hook(sha=SHA)
        if event
        else payloads.status_check_request(sha=SHA, check_name="conventional-title")
    )
    body = padded(payload, bot.settings.max_body_bytes - 1024)
    assert len(body) > 10_000_000
    headers = {"X-Gitlab-Signature": payloads.sign(secret, body)} if event is None else {}
    # The bot's own cost of a small delivery, measured the same way, is the baseline.
    small = json.dumps(payload).encode()
    small_headers = {"X-Gitlab-Signature": payloads.sign(secret, small)} if not event else {}
    async with LoopLag() as baseline:
        for _ in range(3):
            assert (await bot.deliver(None, raw=small, event=event, headers=small_headers))[
                0
            ] == 202
    await bot.settle()
    gitlab.reset_calls()
    async with LoopLag() as lag:
        started = time.perf_counter()
        status, answer = await bot.deliver(None, raw=body, event=event, headers=headers)
        elapsed = time.perf_counter() - started
    assert status == 202, answer
    print(
        f"10 MB body: answered in {elapsed * 1000:.0f} ms; worst loop stall "
        f"{lag.worst * 1000:.1f} ms (small deliveries: {baseline.worst * 1000:.1f} ms)"
    )
    assert lag.worst < max(0.05, 2 * baseline.worst), sorted(lag.lags)[-5:]
    await bot.settle()
    assert gitlab.calls, "the MR was evaluated"


BAD_IID = b'{"project": {"id": 1}, "object_attributes": {"iid": "x"}, "pad": "%s"}' % (
    b"y" * 1_000_000
)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[" * 400_000 + b"]" * 400_000, "JSON is nested too deeply"),
        (b'{"a": "' + b"x" * 2_000_000, "malformed JSON"),
        (b"[" + b"0," * 1_000_000 + b"0]", "expected a JSON object, got an array"),
        (BAD_IID, "`object_attributes.iid` must be a positive integer id"),
    ],
    ids=["800k-nested", "truncated-2mb", "2mb-array", "1mb-bad-field"],
)
async def test_large_broken_bodies_get_the_same_400_as_small_ones(
    gitlab: FakeGitLab, bot: Bot, body: bytes, error: str
) -> None:
    """Parsed in the helper process, a big broken body is still a 400 that says what is wrong,
    and the loop is not blocked meanwhile."""
    assert len(body) > 256 * 1024
    gitlab.reset_calls()
    async with LoopLag() as lag:
        status, answer = await bot.deliver(None, raw=body)
    assert status == 400, answer
    assert error in answer["error"]
    assert lag.worst < 0.1, sorted(lag.lags)[-5:]
    assert gitlab.calls == []

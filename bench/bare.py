"""The intake baseline: a bare aiohttp app that checks the token, parses the JSON and answers 202.

It is what any webhook receiver must do at the least, so the bot's intake throughput divided by
this app's, under the same load in the same run, says what the bot's own work costs.

    python -m bench.bare --secret S      # prints its URL on the first stdout line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import signal

from aiohttp import web


def make_app(secret: str) -> web.Application:
    expected = secret.encode()

    async def webhook(request: web.Request) -> web.Response:
        given = request.headers.get("X-Gitlab-Token")
        if given is None or not hmac.compare_digest(given.encode(), expected):
            return web.json_response({"error": "wrong X-Gitlab-Token"}, status=401)
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError as exc:
            return web.json_response({"error": f"malformed JSON: {exc}"}, status=400)
        if not isinstance(data, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        return web.json_response({"status": "queued"}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args.secret), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare webhook receiver (intake baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()

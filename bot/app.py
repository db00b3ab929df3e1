"""The aiohttp application: routes plus cleanup contexts that own every long-lived resource.

`create_app(settings)` is the only way the service is built, in production and in tests, so what
the tests run is what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.decide import Evaluator
from bot.gitlab import GitLab, GitLabError
from bot.intake import make_webhook_handler
from bot.keys import BranchKey, Hint, MRKey
from bot.logs import get_logger
from bot.policy_store import PolicyStore
from bot.queue import CoalescingQueue

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POLICIES = web.AppKey("policies", PolicyStore)
GITLAB = web.AppKey("gitlab", GitLab)
QUEUE = web.AppKey("queue", CoalescingQueue)
EVALUATOR = web.AppKey("evaluator", Evaluator)
VERSION_RETRY = web.AppKey("version_retry", asyncio.Task)

READY_PROBE_AGE = 30.0


async def _gitlab_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.gitlab_timeout)
    connector = aiohttp.TCPConnector(limit=settings.gitlab_concurrency * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        gitlab = GitLab(
            session,
            url=settings.gitlab_url,
            token=settings.gitlab_token,
            timeout=settings.gitlab_timeout,
            concurrency=settings.gitlab_concurrency,
        )
        app[GITLAB] = gitlab
        if await gitlab.detect_version() is None:
            app[VERSION_RETRY] = asyncio.create_task(_retry_version(gitlab))
        yield
        task = app.get(VERSION_RETRY)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _retry_version(gitlab: GitLab, interval: float = 60.0) -> None:
    """Keep asking until GitLab says its version (it decides how failures are reported)."""
    while gitlab.detected_version is None:
        await asyncio.sleep(interval)
        await gitlab.detect_version()


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[POLICIES]
    queue: CoalescingQueue[MRKey | BranchKey] = CoalescingQueue(
        lambda key, hint: evaluator(key, hint), workers=settings.workers
    )
    evaluator = Evaluator(app[GITLAB], lambda: store.current, submit=queue.submit)
    app[QUEUE] = queue
    app[EVALUATOR] = evaluator
    queue.start()
    yield
    left = await queue.stop(deadline=settings.shutdown_deadline)
    log.info("workers_stopped", abandoned=left)


async def _policy_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[POLICIES]
    settings = app[SETTINGS]
    watcher = asyncio.create_task(store.watch(settings.policy_poll_interval))
    loop = asyncio.get_running_loop()
    hup = False
    if settings.handle_signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, store.reload)
            hup = True
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when policies are loaded and GitLab answered recently (or answers a probe now)."""
    store = request.app[POLICIES]
    gitlab = request.app.get(GITLAB)
    problems = []
    if not store.loaded:
        problems.append("policies are not loaded")
    if gitlab is None:
        problems.append("GitLab client not started")
    elif time.monotonic() - gitlab.last_contact > READY_PROBE_AGE:
        try:
            async with asyncio.timeout(3):
                await gitlab.get("/version")
        except (GitLabError, TimeoutError) as exc:
            problems.append(f"GitLab is unreachable: {exc}")
    body: dict[str, Any] = {
        "status": "ready" if not problems else "not ready",
        "policies": len(store.current),
    }
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=200 if not problems else 503)


def create_app(settings: Settings, store: PolicyStore | None = None) -> web.Application:
    """Build the service. `store` must already hold loaded policies (serve loads them strictly)."""
    if store is None:
        store = PolicyStore(settings.policy_dir)
        store.load()
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[POLICIES] = store

    def submit(key: MRKey | BranchKey, hint: Hint) -> bool:
        queue = app.get(QUEUE)
        return queue.submit(key, hint) if queue is not None else False

    app.router.add_post(
        "/webhook",
        make_webhook_handler(
            webhook_secret=settings.webhook_secret,
            status_check_secret=settings.status_check_secret,
            submit=submit,
        ),
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.cleanup_ctx.extend([_gitlab_ctx, _workers_ctx, _policy_watch_ctx])
    return app

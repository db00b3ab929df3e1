"""Fixtures: a fake GitLab (a real HTTP server) and the bot as a real server, both on 127.0.0.1."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.logs import configure_logging
from bot.service.app import QUEUE, SWEEPER, create_app
from bot.service.details import LINK_KEY
from bot.service.links import signed_link
from bot.service.policy_store import PolicyStore
from tests.fakegitlab import FakeGitLab

TOKEN = "test-token-0123456789"
WEBHOOK_SECRET = "hook-secret-abcdef"


class LoopLag:
    """A ticker on the event loop: how late each 5 ms sleep wakes is how long the loop was
    blocked (by anything: our handler, aiohttp, the test client)."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.lags.append(time.perf_counter() - started - self.tick)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.02)
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def worst(self) -> float:
        return max(self.lags, default=0.0)


async def eventually(condition: Callable[[], bool], limit: float = 15.0) -> None:
    """Wait until `condition()` holds (polling: the fake GitLab's state has no events)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {limit} s")
        await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _quiet_logs(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json", level="info", secrets=[TOKEN, WEBHOOK_SECRET])


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab(token=TOKEN)
    await fake.start()
    yield fake
    await fake.close()


def write_policies(folder: Path, policies: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in policies.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@dataclass
class Bot:
    """The bot running as a real server, and a client that delivers like GitLab does."""

    url: str
    app: web.Application
    session: aiohttp.ClientSession
    settings: Settings
    server: TestServer | None = None

    async def stop(self) -> None:
        """Stop as SIGTERM would: drain the workers, close the decision record."""
        if self.server is not None:
            await self.server.close()

    async def deliver(
        self,
        payload: Any,
        *,
        event: str | None = "Merge Request Hook",
        token: str | None = WEBHOOK_SECRET,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        all_headers = {"Content-Type": "application/json"}
        if event is not None:
            all_headers["X-Gitlab-Event"] = event
        if token is not None and event is not None:
            all_headers["X-Gitlab-Token"] = token
        all_headers.update(headers or {})
        body = raw if raw is not None else json.dumps(payload).encode()
        async with self.session.post(f"{self.url}/webhook", data=body, headers=all_headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def settle(self, limit: float = 10.0) -> None:
        """Wait until every queued evaluation (including immediate re-runs) is done."""
        await settle(self.app, limit)


async def settle(app: web.Application, limit: float = 10.0) -> None:
    """Wait until the app's queue has nothing queued or running (timers may still be set)."""
    queue = app[QUEUE]
    async with asyncio.timeout(limit):
        while True:
            await queue.join()
            await asyncio.sleep(0.02)
            if queue.depth == 0 and queue.running == 0:
                return


DEFAULT_POLICIES = {
    "title.yml": """
        check: conventional-title
        require:
          - title: '^(feat|fix|docs|chore)(\\(.+\\))?: '
    """,
    "pipeline.yml": """
        check: pipeline-green
        require:
          - pipeline: success
    """,
}


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return write_policies(tmp_path / "policies", DEFAULT_POLICIES)


@pytest.fixture
def make_settings(gitlab: FakeGitLab, policy_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        settings = Settings(
            gitlab_url=gitlab.url,
            gitlab_token=TOKEN,
            webhook_secret=WEBHOOK_SECRET,
            policy_dir=policy_dir,
            state_dir=tmp_path / "state",
            workers=4,
            gitlab_timeout=5.0,
            handle_signals=False,
            policy_poll_interval=0.2,
            shutdown_deadline=2.0,
            # Two evaluations of one MR start at least this far apart. The product's 0.5 s
            # (EVALUATION_SPACING) only paced tests that deliver one MR several times in a row;
            # tests of the spacing itself set it (tests/service/test_queue.py).
            evaluation_spacing=0.05,
        )
        return replace(settings, **overrides)

    return make


@pytest.fixture
async def start_bot(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def start(**overrides: Any) -> Bot:
        settings = make_settings(**overrides)
        store = PolicyStore(settings.policy_dir)
        store.load()
        app = create_app(settings, store)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        if not settings.projects:
            # The start-up sweep has nothing to do here; let it finish so that it cannot pick
            # up the project of the test's first delivery and add reads the test did not ask for.
            await asyncio.wait_for(app[SWEEPER].swept.wait(), 5)
        return Bot(str(server.make_url("")).rstrip("/"), app, session, settings, server)

    yield start
    for server in servers:
        await server.close()
    await session.close()


@pytest.fixture
async def bot(start_bot: Callable[..., Any]) -> Bot:
    return await start_bot()


# -- the details page ------------------------------------------------------------------------


def link(bot: Bot, project_id: int = 1, iid: int = 1, *, json: bool = False, **kw: Any) -> str:
    signed = signed_link(bot.app[LINK_KEY], project_id, iid, ttl=kw.pop("ttl", 300), **kw)
    if json:
        path, query = signed.split("?", 1)
        signed = f"{path}.json?{query}"
    return bot.url + signed


async def get(bot: Bot, url: str) -> tuple[int, Any, dict[str, str]]:
    async with bot.session.get(url) as resp:
        is_json = resp.content_type == "application/json"
        body = await (resp.json() if is_json else resp.text())
        return resp.status, body, dict(resp.headers)


# -- PostgreSQL (DATABASE_URL) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster per pytest worker, with a migrated template database."""
    from bot.service.schema import migrate_url
    from tests.postgres import Cluster, require_binaries

    cluster = Cluster(require_binaries())
    try:
        cluster.init()
        cluster.start()
        cluster.psql("CREATE DATABASE bot_template")
        # In a thread: the first test to ask may be running an event loop already.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrate_url(cluster.url("bot_template"))).result()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def database_url(pg_cluster: Any) -> str:
    """A fresh, migrated database of the session's cluster."""
    return str(pg_cluster.new_database())

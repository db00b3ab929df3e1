"""A fleet of real `python -m bot serve` processes on one PostgreSQL database, against the fake
GitLab running in the test's own process (README "Running more than one")."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import TOKEN, WEBHOOK_SECRET
from tests.fakegitlab import FakeGitLab
from tests.processes import REPO, bot_cmd, clean_env, free_port


@dataclass
class Replica:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        """The replica's JSON log lines so far."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]


@dataclass
class Fleet:
    gitlab: FakeGitLab
    database_url: str
    policy_dir: Path
    folder: Path
    settings: dict[str, Any] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    _names: Any = field(default_factory=lambda: itertools.count(1))

    async def start(self, **settings: Any) -> Replica:
        """Start one more replica and wait until it answers /healthz."""
        name = f"r{next(self._names)}"
        port = free_port()
        log = self.folder / f"{name}.log"
        env = clean_env(
            GITLAB_URL=self.gitlab.url,
            GITLAB_TOKEN=TOKEN,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            POLICY_DIR=self.policy_dir,
            STATE_DIR=self.folder / name,
            DATABASE_URL=self.database_url,
            HOST="127.0.0.1",
            PORT=port,
            LOG_FORMAT="json",
            PYTHONFAULTHANDLER=1,  # a replica that hangs is made to dump its stacks (stop)
            **{"RECONCILE_INTERVAL": 3600, "SHUTDOWN_DEADLINE": 5, **self.settings, **settings},
        )
        with log.open("wb") as out:
            # Niced: the other pytest worker may be timing its event loop (loop-stall tests);
            # a fleet of bots must not starve it of the machine's two cores.
            proc = await asyncio.create_subprocess_exec(
                "nice",
                "-n",
                "10",
                *bot_cmd("serve"),
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        replica = Replica(name, port, proc, log)
        self.replicas.append(replica)
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{replica.url}/healthz") as resp:
                        if resp.status == 200:
                            return replica
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        raise AssertionError(f"{name} did not start: {log.read_text()}")

    async def kill(self, replica: Replica) -> None:
        replica.proc.send_signal(signal.SIGKILL)
        await replica.proc.wait()

    async def stop(self, replica: Replica, limit: float = 20) -> int:
        replica.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(replica.proc.wait(), limit)
        except TimeoutError:
            replica.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            await replica.proc.wait()
            tail = "\n".join(replica.log.read_text(errors="replace").splitlines()[-60:])
            raise AssertionError(f"{replica.name} hung on SIGTERM:\n{tail}") from None

    async def close(self) -> None:
        for replica in self.replicas:
            if replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGKILL)
                await replica.proc.wait()


async def deliver(
    session: aiohttp.ClientSession, replica: Replica, payload: Any, delivery_id: str | None = None
) -> tuple[int, Any]:
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Merge Request Hook",
        "X-Gitlab-Token": WEBHOOK_SECRET,
    }
    if delivery_id is not None:
        headers["Idempotency-Key"] = delivery_id
    async with session.post(f"{replica.url}/webhook", json=payload, headers=headers) as resp:
        return resp.status, await resp.json()

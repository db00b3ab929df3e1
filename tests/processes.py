"""Helpers for tests that run the bot or the fake GitLab as real processes, the way users run
them: `python -m bot ...` and `python -m tests.fakegitlab ...` with a controlled environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "policies"


def clean_env(**settings: Any) -> dict[str, str]:
    """Only what a user's shell would have plus the given settings: nothing leaks from ours."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: str(value) for key, value in settings.items()})
    return env


def bot_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot", *args]


def run_bot(
    *args: str | Path, timeout: float = 60, cwd: Path = REPO, **settings: Any
) -> subprocess.CompletedProcess[str]:
    """`python -m bot ...` as a user's shell or a CI job runs it: only the given settings in the
    environment (the repository importable from any `cwd`)."""
    return subprocess.run(
        bot_cmd(*map(str, args)),
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(REPO), **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def standalone_fake(*args: str) -> Iterator[str]:
    """`python -m tests.fakegitlab --port 0 ...`; yields its URL (its first line of output)."""
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakegitlab", "--port", "0", "--token", TOKEN, *args],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        ready, _, _ = select.select([fake.stdout], [], [], 15)
        assert ready, "the fake GitLab did not print its URL"
        url = fake.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        fake.send_signal(signal.SIGTERM)
        try:
            fake.wait(timeout=5)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_until(probe: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            result = probe()
            if result:
                return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def explain_process(
    gitlab: FakeGitLab, reference: str, *, tty: bool = False, **settings: Any
) -> tuple[int, str, str]:
    """Run `python -m bot explain` (stdout on a pseudo-terminal when `tty`)."""
    env = clean_env(GITLAB_URL=gitlab.url, GITLAB_TOKEN=TOKEN, POLICY_DIR=SHIPPED, **settings)
    master = slave = -1
    if tty:
        master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *bot_cmd("explain", reference),
        cwd=REPO,
        env=env,
        stdout=slave if tty else asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if tty:
        os.close(slave)
        out_bytes, err_bytes = await asyncio.gather(
            asyncio.to_thread(_read_pty, master),
            proc.stderr.read(),  # type: ignore[union-attr]
        )
        os.close(master)
        await asyncio.wait_for(proc.wait(), 30)
    else:
        out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out_bytes.decode(), err_bytes.decode()


def _read_pty(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)

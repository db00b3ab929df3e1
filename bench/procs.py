"""The processes under test: the fake GitLab, the bot and the bare baseline app, each a real
child process on 127.0.0.1, started the way a user (or the fake's own docs) starts them.

A process is only ever stopped by its own pid; nothing here kills by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOKEN = "bench-token-0123456789"
WEBHOOK_SECRET = "bench-hook-secret-abcdef"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessError(RuntimeError):
    """A process under test did not start or died; the message names its stderr file."""


@dataclass
class Process:
    """One child process and where it listens."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise ProcessError(f"{self.name}: no {field} in /proc/{self.pid}/status")

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS)."""
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """The highest resident set size so far (VmHWM)."""
        return self._status_kib("VmHWM") * 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used (from /proc/PID/stat)."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self.profiler is not None:  # py-spy writes its profile once the process is gone
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait(5)
            self.profiler = None

    def profile_into(self, folder: Path) -> Path:
        """Record a py-spy profile (speedscope JSON) of this process until it stops.

        Blocking mode (py-spy pauses the process for each sample, a few % slower): without it,
        over half the stacks of the busy bot came out torn, which misattributes the samples."""
        spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        output = folder / f"{self.name}.speedscope.json"
        command = [spy, "record", "--pid", str(self.pid), "--rate", "200"]
        command += ["--format", "speedscope", "--output", str(output)]
        with (folder / f"{self.name}.py-spy.log").open("wb") as log:
            self.profiler = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return output

    def stderr_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _first_line(popen: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of a child that prints its URL, or "" if none came in time."""
    assert popen.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(popen.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0].decode().strip() if box else ""


def _spawn_printing_url(
    name: str, args: Sequence[str], workdir: Path, timeout: float = 30.0
) -> Process:
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [PYTHON, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    url = _first_line(popen, timeout)
    process = Process(name, popen, url, stderr_path)
    if not url.startswith("http://"):
        process.stop()
        raise ProcessError(f"{name} did not print its URL: {process.stderr_tail()}")
    return process


def start_fake(
    workdir: Path,
    *,
    name: str = "fakegitlab",
    seed_mrs: int = 0,
    checks: Sequence[str] = (),
    latency: float = 0.0,
    bot_url: str = "http://127.0.0.1:1/webhook",
    seed_status: str | None = None,
) -> Process:
    """`python -m tests.fakegitlab` with project 1 acme/app holding `seed_mrs` open MRs."""
    args = ["-m", "tests.fakegitlab", "--port", "0", "--token", TOKEN]
    args += ["--latency", str(latency), "--seed-mrs", str(seed_mrs)]
    args += ["--checks", ",".join(checks), "--bot-url", bot_url]
    if seed_status:
        args += ["--seed-status", seed_status]
    return _spawn_printing_url(name, args, workdir, timeout=60.0 + seed_mrs / 1000)


def start_bare(workdir: Path) -> Process:
    """The intake baseline: `python -m bench.bare`, token check + JSON parse, nothing else."""
    return _spawn_printing_url("bare", ["-m", "bench.bare", "--secret", WEBHOOK_SECRET], workdir)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on 127.0.0.1/0.0.0.0:`port` (TCP LISTEN rows of /proc/net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds the socket listening on `port`.

    free_port() only picks a port that was free a moment ago: on a shared machine another
    process (someone's test suite) can bind it first, answer our /healthz, and vanish later.
    """
    inodes = _listening_inodes(port)
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


def _wait_healthy(process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    port = int(process.url.rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        if not process.alive():
            raise ProcessError(f"{process.name} exited: {process.stderr_tail()}")
        if not _listens(process.pid, port):
            time.sleep(0.05)
            continue
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{process.url}/healthz", timeout=1) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.05)
    process.stop()
    raise ProcessError(f"{process.name} did not answer /healthz: {process.stderr_tail()}")


def start_bot(
    workdir: Path,
    *,
    gitlab_url: str,
    policy_dir: Path,
    name: str = "bot",
    log_level: str = "warning",
    env: Mapping[str, str] | None = None,
) -> Process:
    """`python -m bot serve`, configured only through its documented environment.

    Started again on another port (up to 3 times) when another process took the chosen port
    between free_port() and the bot's bind."""
    for attempt in range(3):
        try:
            return _start_bot_once(workdir, gitlab_url, policy_dir, name, log_level, env)
        except ProcessError as exc:
            if attempt == 2 or "address" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def _start_bot_once(
    workdir: Path,
    gitlab_url: str,
    policy_dir: Path,
    name: str,
    log_level: str,
    env: Mapping[str, str] | None,
) -> Process:
    port = free_port()
    state_dir = workdir / f"{name}-state"
    state_dir.mkdir(exist_ok=True)
    settings = {
        "GITLAB_URL": gitlab_url,
        "GITLAB_TOKEN": TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "POLICY_DIR": str(policy_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "STATE_DIR": str(state_dir),
        "LOG_LEVEL": log_level,
        "LOG_FORMAT": "json",
        "SHUTDOWN_DEADLINE": "1",
        **(env or {}),
    }
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [PYTHON, "-m", "bot", "serve"],
            cwd=ROOT,
            env={**os.environ, **settings},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    process = Process(name, popen, f"http://127.0.0.1:{port}", stderr_path)
    _wait_healthy(process, timeout=30.0)
    return process

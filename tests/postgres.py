"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` package, started with
initdb and pg_ctl in a temporary folder, one per pytest worker (README "Running more than one").

Each test gets a fresh database copied from a migrated template (`CREATE DATABASE ... TEMPLATE`,
a few milliseconds). Under CI (CI=1, set by .ci/run) a missing PostgreSQL fails the test that
needs it; elsewhere it skips it with the command that installs it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.processes import free_port

INSTALL = "apt-get install -y postgresql"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps each major version apart)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def require_binaries() -> Path:
    found = binaries()
    if found is None:
        message = f"PostgreSQL is not installed ({INSTALL})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: under CI the PostgreSQL tests must run", pytrace=False)
        pytest.skip(message)
    return found


class Cluster:
    """One running cluster on 127.0.0.1 with trust authentication for the user `bot`."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        """`durable`: fsync and synchronous commits on, as in production (the benchmarks); the
        tests turn them off, since a throwaway cluster needs no durability."""
        self.bin = bin_dir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="bot-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count()
        # PostgreSQL refuses to run as root: run its programs as the `postgres` user then.
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.log = self.root / "server.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "bot",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
            if not self.durable:
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart"
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://bot@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.url(database),
            "-c",
            sql,
        )
        return result.stdout.strip()

    def new_database(self, template: str | None = "bot_template") -> str:
        """A fresh database (a copy of the migrated template unless `template` is None)."""
        name = f"t{os.getpid()}_{next(self._names)}_{int(time.time() * 1000) % 100000}"
        clause = f" TEMPLATE {template}" if template else ""
        self.psql(f"CREATE DATABASE {name}{clause}")
        return self.url(name)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

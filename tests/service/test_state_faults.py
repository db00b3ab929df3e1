"""State faults (issue 10 item 8): the decision record's database overwritten while the bot runs,
and a full disk at start.

Overwritten: verdicts keep flowing; the details page still answers (with the record's problem
shown), never 500; the logs say it in one clear line (`record_failed`), with no traceback;
/readyz and /metrics report the record's errors. A full disk at start: `serve` stops with one
line that says "disk full"."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.service.app import RECORD
from bot.service.record import DB_NAME, DecisionRecord
from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import TOKEN, Bot, get, link
from tests.fakegitlab import FakeGitLab
from tests.processes import REPO, bot_cmd, clean_env, standalone_fake

SHA = "6" * 40


def seed(gitlab: FakeGitLab, iid: int) -> None:
    seed_project(gitlab, ["conventional-title"])
    seed_mr(gitlab, iid=iid, sha=SHA, source_branch=f"feature-{iid}")


async def evaluate(gitlab: FakeGitLab, bot: Bot, iid: int) -> None:
    seed(gitlab, iid)
    status, _ = await bot.deliver(payloads.merge_request_hook(iid=iid, sha=SHA))
    assert status == 202
    await bot.settle()


def overwrite(path: Path) -> None:
    """What a careless `cp` over STATE_DIR does: other bytes in the database and its WAL."""
    for part in (path, path.with_name(path.name + "-wal")):
        if part.exists():
            size = max(part.stat().st_size, 4096)
            with part.open("r+b") as handle:
                handle.write(b"this is not a database " * (size // 23 + 1))


def events(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, Any]], str]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")], err


async def test_a_database_overwritten_while_running(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    await evaluate(gitlab, bot, 1)
    record = bot.app[RECORD]
    await record.flush()
    overwrite(bot.settings.state_dir / DB_NAME)
    capsys.readouterr()

    # Verdicts keep flowing (two more MRs, one of them twice), and a status set by hand is
    # repaired (which reads what the bot posted before from the record).
    for iid in (2, 3, 2):
        await evaluate(gitlab, bot, iid)
    check_id = next(iter(gitlab.projects[1].checks))
    gitlab.set_status(1, 1, check_id, SHA, "failed")
    assert (await bot.deliver(payloads.merge_request_hook(iid=1, sha=SHA)))[0] == 202
    await bot.settle()
    for iid in (1, 2, 3):
        assert gitlab.check_status(1, iid, "conventional-title") == "passed"

    # The details page answers, saying what it cannot show.
    for as_json in (True, False):
        status, body, _ = await get(bot, link(bot, 1, 2, json=as_json))
        assert status == 200, body
        text = json.dumps(body) if as_json else body
        assert "decision record" in text and "cannot be read" in text, text[:2000]

    # /readyz and /metrics report it.
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        ready = await resp.json()
    assert any("decision record" in w for w in ready.get("warnings", [])), ready
    assert ready["status"] == "degraded", ready
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        metrics = await resp.text()
    assert "gitlab_status_bot_record_failing 1.0" in metrics
    errors = [
        line for line in metrics.splitlines() if line.startswith("gitlab_status_bot_record_errors")
    ]
    assert errors and all(float(line.split()[-1]) >= 0 for line in errors), errors
    assert sum(float(line.split()[-1]) for line in errors if "_total" in line) > 0

    # One clear log line, no traceback.
    logged, raw = events(capsys)
    assert "Traceback" not in raw
    assert not [e for e in logged if "exception" in e]
    failed = [e for e in logged if e["event"] == "record_failed"]
    assert len(failed) == 1, [e["event"] for e in logged]
    assert "not a database" in failed[0]["error"] or "malformed" in failed[0]["error"]


@contextlib.contextmanager
def full_disk() -> Iterator[Path]:
    """A real filesystem with no space left: a 1 MB tmpfs filled up (needs root to mount)."""
    mount = Path(tempfile.mkdtemp(prefix="full-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as handle:
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    assert shutil.disk_usage(folder).free < 65536


@pytest.mark.parametrize("when", ["new", "existing"])
def test_a_full_disk_at_start_says_disk_full(tmp_path: Path, when: str) -> None:
    """STATE_DIR on a full disk: a new record (nothing can be created) or an existing one
    (opening writes to it)."""
    with full_disk() as mount, standalone_fake() as gitlab_url:
        state = mount / "state"
        if when == "existing":
            import asyncio

            asyncio.run(DecisionRecord.open(state).close())
        fill(mount)
        result = subprocess.run(
            bot_cmd("serve"),
            cwd=REPO,
            env=clean_env(
                GITLAB_URL=gitlab_url,
                GITLAB_TOKEN=TOKEN,
                STATE_DIR=state,
                HOST="127.0.0.1",
                PORT=0,
                LOG_FORMAT="json",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr
    assert "disk full" in errors[0], errors[0]
    assert os.fspath(state) in errors[0]

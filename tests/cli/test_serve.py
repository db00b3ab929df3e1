"""`python -m bot serve` as users run it: refusing to start with one line that says what to fix,
and a real process against a standalone fake GitLab."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import payloads
from tests.conftest import TOKEN, WEBHOOK_SECRET, write_policies
from tests.fakegitlab import sha_for
from tests.processes import (
    REPO,
    SHIPPED,
    assert_one_error_line,
    bot_cmd,
    clean_env,
    free_port,
    http,
    run_bot,
    standalone_fake,
    wait_until,
)


def test_serve_without_gitlab_url_says_so_in_one_line() -> None:
    result = run_bot("serve", GITLAB_TOKEN=TOKEN)
    assert_one_error_line(result, "GITLAB_URL is not set")
    assert result.stdout == ""


def test_serve_without_a_token_says_so_in_one_line() -> None:
    result = run_bot("serve", GITLAB_URL="http://127.0.0.1:9")
    assert_one_error_line(result, "GITLAB_TOKEN (or GITLAB_TOKEN_FILE) is not set")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_serve_with_an_unreadable_token_file_says_so_in_one_line(tmp_path: Path, kind: str) -> None:
    token_file = tmp_path / "token"
    if kind == "folder":
        token_file.mkdir()
    result = run_bot("serve", GITLAB_URL="http://127.0.0.1:9", GITLAB_TOKEN_FILE=token_file)
    assert_one_error_line(result, f"GITLAB_TOKEN_FILE '{token_file}' cannot be read")


def test_serve_with_an_invalid_policy_names_file_and_line(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "policies",
        {"review.yml": "check: review\nrequire:\n  - lables: {any: [reviewed]}\n"},
    )
    result = run_bot(
        "serve",
        GITLAB_URL="http://127.0.0.1:9",
        GITLAB_TOKEN=TOKEN,
        POLICY_DIR=folder,
        STATE_DIR=tmp_path / "state",
    )
    assert_one_error_line(
        result,
        f"invalid policy: {folder}/review.yml:3: unknown predicate `lables`; "
        "did you mean `labels`?",
    )


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_bot(
            "serve",
            GITLAB_URL="http://127.0.0.1:9",
            GITLAB_TOKEN=TOKEN,
            POLICY_DIR=SHIPPED,
            STATE_DIR=tmp_path / "state",
            HOST="127.0.0.1",
            PORT=taken.getsockname()[1],
            LOG_LEVEL="error",
            GITLAB_TIMEOUT=0.5,
        )
    assert_one_error_line(result, "cannot listen on 127.0.0.1:")


def test_serve_runs_decides_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with standalone_fake("--seed-mrs", "1", "--checks", "conventional-title") as gitlab_url:
        serve = subprocess.Popen(
            bot_cmd("serve"),
            cwd=REPO,
            env=clean_env(
                GITLAB_URL=gitlab_url,
                GITLAB_TOKEN=TOKEN,
                WEBHOOK_SECRET=WEBHOOK_SECRET,
                POLICY_DIR=SHIPPED,
                STATE_DIR=tmp_path / "state",
                HOST="127.0.0.1",
                PORT=port,
                LOG_FORMAT="json",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            bot = f"http://127.0.0.1:{port}"
            assert wait_until(lambda: http("GET", f"{bot}/healthz")) == (200, {"status": "ok"})
            hook = payloads.merge_request_hook(project_id=1, iid=1, sha=sha_for("seed/1"))
            headers = {
                "Content-Type": "application/json",
                "X-Gitlab-Event": "Merge Request Hook",
                "X-Gitlab-Token": WEBHOOK_SECRET,
            }
            assert http("POST", f"{bot}/webhook", hook, headers)[0] == 202
            statuses = f"{gitlab_url}/_fake/statuses/1/1"
            wait_until(lambda: http("GET", statuses)[1] == {"conventional-title": "passed"})
            started = time.monotonic()
            serve.send_signal(signal.SIGTERM)
            _, stderr = serve.communicate(timeout=10)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.communicate()
    assert serve.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert "Traceback" not in stderr
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "decision" in events and events[-1] == "stopped"
    assert TOKEN not in stderr and WEBHOOK_SECRET not in stderr


def test_serve_on_a_database_postgres_refuses_says_so_in_one_line(pg_cluster: Any) -> None:
    """DATABASE_URL names a database that does not exist: one line before any traffic, the
    password masked."""
    url = pg_cluster.url("no_such_database").replace("bot@", "bot:pw-s3cret@")
    result = run_bot(
        "serve",
        GITLAB_URL="http://127.0.0.1:9",
        GITLAB_TOKEN=TOKEN,
        POLICY_DIR=SHIPPED,
        PORT=free_port(),
        HOST="127.0.0.1",
        DATABASE_URL=url,
        LOG_LEVEL="error",
    )
    assert_one_error_line(result, "PostgreSQL refuses DATABASE_URL 'postgresql://***@127.0.0.1:")
    assert "no_such_database" in result.stderr
    assert "pw-s3cret" not in result.stdout + result.stderr


def test_database_url_must_be_postgresql() -> None:
    result = run_bot(
        "serve", GITLAB_URL="http://127.0.0.1:9", GITLAB_TOKEN=TOKEN, DATABASE_URL="mysql://x/y"
    )
    assert_one_error_line(result, "DATABASE_URL 'mysql://x/y' is not a postgresql:// URL")

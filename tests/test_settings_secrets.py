"""Secrets in settings (issue 10 item 9): a GITLAB_URL carrying user:password is refused at start
with one line that does not repeat the password, and LINK_SECRET is masked in logs like the
other secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.cli.base import local_settings, settings_from_env
from bot.logs import get_logger
from tests.processes import REPO, clean_env, free_port, run_bot

PASSWORD = "hunter2-s3cr3t-pass"


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("GITLAB_URL", f"https://bot:{PASSWORD}@gitlab.example.com"),
        ("GITLAB_URL", f"http://{PASSWORD}@127.0.0.1:9"),  # a token as the user name
        ("PUBLIC_URL", f"https://ops:{PASSWORD}@bot.example.com"),
    ],
    ids=["gitlab-user-password", "gitlab-user-only", "public-url"],
)
def test_a_url_with_credentials_is_refused_at_start_without_repeating_them(
    tmp_path: Path, variable: str, url: str
) -> None:
    env = clean_env(
        GITLAB_URL="http://127.0.0.1:9",
        GITLAB_TOKEN="glpat-test-token-000",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        STATE_DIR=str(tmp_path / "state"),
        LOG_FORMAT="json",
    )
    env[variable] = url
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.terminate()
        out, err = process.communicate(timeout=15)
        pytest.fail(f"serve started with credentials in {variable}; it logged:\n{err[-2000:]}")
    assert process.returncode == 2, err
    assert PASSWORD not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {variable} must not contain a user name or password")


def test_link_secret_is_masked_in_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands' own logging set-up (`serve`, `explain`, `register`; and `link`/`history`)
    masks LINK_SECRET wherever it would appear, as it masks the token and the webhook secrets."""
    secret = "link-secret-0123456789abcdef"
    monkeypatch.setenv("GITLAB_URL", "https://gitlab.example.com")
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-test-token-000")
    monkeypatch.setenv("LINK_SECRET", secret)
    monkeypatch.setenv("LOG_FORMAT", "json")
    log = get_logger("tests.secrets")
    for configure in (settings_from_env, local_settings):
        configure()
        capsys.readouterr()
        log.error("something_failed", detail=f"while signing with {secret}")
        err = capsys.readouterr().err
        assert secret not in err, (configure.__name__, err)
        assert json.loads(err.splitlines()[-1])["detail"] == "while signing with [redacted]"


@pytest.mark.parametrize(
    "url", [f"ftp://bot:{PASSWORD}@gitlab.example.com", f"https://bot:{PASSWORD}@/nohost"]
)
def test_no_url_error_repeats_a_password(url: str) -> None:
    from bot.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings({"GITLAB_URL": url, "GITLAB_TOKEN": "glpat-test-token-000"})
    assert PASSWORD not in str(caught.value)
    assert "***@" in str(caught.value)


# DATABASE_URL passwords (review 12, defect 6): in the user part, with characters a URL parser
# reads as the end of it (`/`, `#`, `?` unencoded), or as libpq's `password=` parameter.
DB_PASSWORDS = {
    "query": ("postgresql://bot@127.0.0.1:{port}/{db}?password=LeakyPw3", "LeakyPw3"),
    "query-and-more": (
        "postgresql://bot@127.0.0.1:{port}/{db}?sslmode=disable&password=LeakyPw4&x=1",
        "LeakyPw4",
    ),
    "slash": ("postgresql://bot:Leaky/Pw2@127.0.0.1:{port}/{db}", "Leaky"),
    "hash": ("postgresql://bot:Leaky#Pw5@127.0.0.1:{port}/{db}", "Leaky"),
    "question": ("postgresql://bot:Leaky?Pw6@127.0.0.1:{port}/{db}", "Leaky"),
    "at": ("postgresql://bot:Leaky@Pw7@127.0.0.1:{port}/{db}", "Leaky"),
    "user-part": ("postgresql://bot:LeakyPw8@127.0.0.1:{port}/{db}", "LeakyPw8"),
}


@pytest.mark.parametrize("case", sorted(DB_PASSWORDS))
def test_masked_database_urls_and_the_log_masker_never_hold_the_password(case: str) -> None:
    from bot.config import database_password, masked_url

    template, password = DB_PASSWORDS[case]
    url = template.format(port=5432, db="statusbot")
    shown = masked_url(url)
    assert password not in shown, shown
    assert "127.0.0.1:5432" in shown or case in ("slash", "hash", "question", "at"), shown
    if case.startswith("query"):
        assert shown.startswith("postgresql://***@127.0.0.1:5432/statusbot?"), shown
        assert database_password(url) == password


def test_the_log_masker_is_given_a_query_password() -> None:
    from bot.cli.base import secrets_of
    from bot.config import load_settings

    settings = load_settings(
        {
            "GITLAB_URL": "http://127.0.0.1:9",
            "GITLAB_TOKEN": "glpat-test-token-000",
            "DATABASE_URL": "postgresql://bot@127.0.0.1:1/db?password=LeakyPw3",
        }
    )
    assert "LeakyPw3" in secrets_of(settings)


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("case", sorted(DB_PASSWORDS))
def test_serve_and_migrate_never_show_a_database_password(
    tmp_path: Path, pg_cluster: Any, command: str, case: str
) -> None:
    """A refused database (one that does not exist) or a URL that cannot be parsed: the one
    error line, and every log line, hold no part of the password."""
    template, password = DB_PASSWORDS[case]
    url = template.format(port=pg_cluster.port, db="no_such_database")
    result = run_bot(
        command,
        GITLAB_URL="http://127.0.0.1:9",
        GITLAB_TOKEN="glpat-test-token-000",
        HOST="127.0.0.1",
        PORT=str(free_port()),
        STATE_DIR=str(tmp_path / "state"),
        LOG_FORMAT="json",
        LOG_LEVEL="debug",
        DATABASE_URL=url,
        timeout=60,
    )
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "error: " in result.stderr


async def test_waiting_for_an_unreachable_database_never_logs_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bot.logs import configure_logging
    from bot.service.database import Database, DatabaseError

    configure_logging(fmt="json", level="debug")  # no masker: what is logged must hold none
    port = free_port()
    for case in ("query", "user-part"):  # (the others are refused by the settings first)
        template, password = DB_PASSWORDS[case]
        db = Database(template.format(port=port, db="statusbot"))
        with pytest.raises(DatabaseError) as raised:
            await db.open(wait=0.5)
        captured = capsys.readouterr()
        assert "database_waiting" in captured.err + captured.out
        assert password not in str(raised.value) + captured.err + captured.out

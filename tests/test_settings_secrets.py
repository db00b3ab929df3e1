"""Secrets in settings (issue 10 item 9): a GITLAB_URL carrying user:password is refused at start
with one line that does not repeat the password, and LINK_SECRET is masked in logs like the
other secrets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli.base import local_settings, settings_from_env
from bot.logs import get_logger
from tests.processes import REPO, clean_env, free_port

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

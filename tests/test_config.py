"""Settings: every bad value stops start-up with one line that says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings

BASE = {"GITLAB_URL": "https://gitlab.example.com/", "GITLAB_TOKEN": "glpat-secret-value"}


def test_defaults_follow_the_design() -> None:
    settings = load_settings({**BASE, "LOG_FORMAT": "json"})
    assert settings.gitlab_url == "https://gitlab.example.com"
    assert settings.policy_dir == Path("policies")
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.reconcile_interval == 300
    assert settings.state_dir == Path("state")
    assert settings.webhook_secret is None and settings.status_check_secret is None
    assert settings.projects == ()


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("glpat-from-file\n")
    env = {"GITLAB_URL": "https://g.example", "GITLAB_TOKEN_FILE": str(token_file)}
    assert load_settings(env).gitlab_token == "glpat-from-file"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GITLAB_TOKEN": "x"}, "GITLAB_URL is not set"),
        ({"GITLAB_URL": "gitlab.example.com", "GITLAB_TOKEN": "x"}, "is not an http(s) URL"),
        ({"GITLAB_URL": "https://g.example"}, "GITLAB_TOKEN (or GITLAB_TOKEN_FILE) is not set"),
        (
            {"GITLAB_URL": "https://g.example", "GITLAB_TOKEN_FILE": "/nonexistent/token"},
            "GITLAB_TOKEN_FILE '/nonexistent/token' cannot be read",
        ),
        ({**BASE, "PORT": "http"}, "PORT must be a number"),
        ({**BASE, "RECONCILE_INTERVAL": "0"}, "RECONCILE_INTERVAL must be at least 1"),
        ({**BASE, "LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of debug, info, warning, error"),
        ({**BASE, "LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of json, console"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_projects_list_and_repr_hides_the_token() -> None:
    settings = load_settings({**BASE, "PROJECTS": "acme/app, 17 ,,", "WEBHOOK_SECRET": "s3cret"})
    assert settings.projects == ("acme/app", "17")
    assert "glpat-secret-value" not in repr(settings)
    assert "s3cret" not in repr(settings)


def test_gitlab_rate_limit_is_off_by_default_and_a_number_of_requests_per_second() -> None:
    assert load_settings(BASE).gitlab_rate_limit == 0  # 0: no budget of our own
    assert load_settings({**BASE, "GITLAB_RATE_LIMIT": "12.5"}).gitlab_rate_limit == 12.5
    with pytest.raises(ConfigError, match="GITLAB_RATE_LIMIT must be at least 0"):
        load_settings({**BASE, "GITLAB_RATE_LIMIT": "-1"})
    with pytest.raises(ConfigError, match="GITLAB_RATE_LIMIT must be a number"):
        load_settings({**BASE, "GITLAB_RATE_LIMIT": "fast"})

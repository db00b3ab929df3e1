"""What every command shares: one-line errors, settings from the environment, logging set up."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from bot.config import ConfigError, Settings, database_passwords, load_settings
from bot.terminal import printable


def fail(message: str, code: int = 2) -> int:
    """Print `error: message` (made printable) on stderr; return the exit status to use."""
    print(f"error: {printable(message)}", file=sys.stderr)
    return code


def settings_from_env(*, quiet: bool = False) -> Settings:
    """Settings, and logging set up; `quiet` (one-shot commands) logs only errors unless debug."""
    settings = load_settings()
    from bot.logs import configure_logging

    level = settings.log_level
    if quiet and level != "debug":
        level = "error"
    configure_logging(fmt=settings.log_format, level=level, secrets=secrets_of(settings))
    return settings


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret: logs mask them wherever they would appear."""
    return [
        s
        for s in (
            settings.gitlab_token,
            settings.webhook_secret,
            settings.status_check_secret,
            settings.link_secret,
            *database_passwords(settings.database_url),
        )
        if s
    ]


def local_settings() -> Settings:
    """Settings for commands that read only STATE_DIR (and the link settings): they must work
    on a machine without GitLab's URL or token, so those two are filled with placeholders."""
    from bot.logs import configure_logging

    env = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_")}
    env.update(GITLAB_URL="http://gitlab.invalid", GITLAB_TOKEN="unused")
    settings = load_settings(env)
    secrets = [s for s in secrets_of(settings) if s != env["GITLAB_TOKEN"]]  # not the placeholder
    configure_logging(fmt=settings.log_format, level="error", secrets=secrets)
    return settings


def dispatch(args: argparse.Namespace) -> int:
    """Run the command `args` was parsed for; what every command may raise ends here as one
    line or a quiet exit, never a traceback."""
    try:
        return int(args.run(args))
    except ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `history ... | head`: the reader has gone; no traceback, no "error:" for it.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's documented idiom
        return 0

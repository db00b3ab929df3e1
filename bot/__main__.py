"""`python -m bot <command>` and the `gitlab-status-bot` script: the commands of bot/cli/,
one module each, assembled into one parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bot.cli import (
    base,
    explain,
    history,
    link,
    migrate,
    policy_tests,
    preview,
    register,
    serve,
    validate,
)

COMMANDS = (serve, validate, policy_tests, explain, preview, register, history, link, migrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="GitLab external status check bot: YAML policies in, verdicts out.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return base.dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bot validate [PATH...]`: check policy files (and test files) without running them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.cli.base import fail
from bot.config import ConfigError, load_settings
from bot.terminal import printable


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("validate", help="check policy files; print file:line: message")
    parser.add_argument("paths", nargs="*", help="policy files or folders (default: policies)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bot.policy import validate_paths
    from bot.policy.loader import policy_files
    from bot.policy.testing import tests_of_folder

    def holds_files(folder: Path) -> bool:
        return bool(policy_files(folder) or tests_of_folder(folder))

    paths = args.paths or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return fail(f"no such file or folder: {', '.join(missing)}")
    empty = [p for p in paths if Path(p).is_dir() and not holds_files(Path(p))]
    if empty:  # a mistyped folder in a CI job must not pass as "valid"
        return fail(
            f"no policy or test files in {', '.join(empty)} (policies are *.yml or *.yaml files)",
            1,
        )
    problems = validate_paths(paths)
    for problem in problems:
        # One line each, whatever the message quotes from the file: shown, never obeyed.
        print(printable(problem))
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return 1
    for warning in unreadable_references(paths):
        print(f"warning: {warning}")
    print("policies are valid")
    return 0


def unreadable_references(paths: Sequence[str]) -> list[str]:
    """With GITLAB_URL and a token in the environment: the groups and users the policies name
    that GitLab cannot show (warnings; without a token nothing is checked)."""
    try:
        settings = load_settings()
    except ConfigError:
        return []
    import asyncio

    import aiohttp

    from bot.gitlab.client import GitLab
    from bot.policy.loader import is_test_file, load_folder
    from bot.service.references import unreadable

    policies = [
        policy
        for raw in paths
        if not (Path(raw).is_file() and is_test_file(Path(raw)))
        for policy in load_folder(Path(raw)).policies
    ]

    async def check() -> list[str]:
        async with aiohttp.ClientSession() as session:
            gitlab = GitLab.from_settings(session, settings, max_attempts=2)
            return await unreadable(gitlab, policies)

    return asyncio.run(check())

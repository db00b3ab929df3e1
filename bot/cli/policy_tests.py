"""`python -m bot test [PATH...]`: run the policies' test cases (`*.test.yaml`).

Named `policy_tests` rather than `test` so that pytest never collects it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bot.cli.base import fail
from bot.terminal import TerminalStream


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("test", help="run the policies' test cases")
    parser.add_argument("paths", nargs="*", help="policy/test files or folders (default: policies)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bot.policy import run_tests
    from bot.policy.testing import NO_CASES

    paths = args.paths or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return fail(f"no such file or folder: {', '.join(missing)}")
    passed, failed = run_tests(paths, TerminalStream(sys.stdout))  # type: ignore[arg-type]
    if not passed and not failed:  # "0 passed, 0 failed" would turn a CI job green
        return fail(NO_CASES.format(where=", ".join(paths)), 1)
    return 1 if failed else 0

"""`python -m bot history PROJECT!IID`: an MR's recorded decisions, from STATE_DIR alone."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bot.cli.base import fail, local_settings
from bot.keys import parse_reference
from bot.terminal import printable


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history", help="print an MR's recorded decisions, newest first (reads STATE_DIR only)"
    )
    parser.add_argument("merge_request", metavar="PROJECT!IID")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bot.service.record import StateError, history_line, read_history

    settings = local_settings()
    try:
        project, iid = parse_reference(args.merge_request)
    except ValueError as exc:
        return fail(str(exc))
    try:
        rows = asyncio.run(read_history(settings.state_dir, project, iid, args.limit))
    except StateError as exc:
        return fail(str(exc), 1)
    if not rows:
        print(printable(f"no decisions recorded for {args.merge_request} in {settings.state_dir}"))
    for row in rows:
        print(history_line(row))
    return 0

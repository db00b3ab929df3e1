"""`python -m bot history PROJECT!IID`: an MR's recorded decisions, from STATE_DIR alone."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bot.cli.base import fail, local_settings
from bot.keys import parse_reference
from bot.policy.explanation import plain
from bot.terminal import printable


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history", help="print an MR's recorded decisions, newest first (reads STATE_DIR only)"
    )
    parser.add_argument("merge_request", metavar="PROJECT!IID")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument(
        "--rules",
        action="store_true",
        help="under each decision, its policy and every rule with its evidence (and the layer "
        "it came from: central file or repository path@sha)",
    )
    parser.set_defaults(run=run)


HEADER = ("TIME (UTC)", "COMMIT", "CHECK", "VERDICT", "ACTION", "REASON")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Recorded decisions as lines of aligned columns under a header (the reason, last, is not
    padded). Every field is made printable: reasons quote MR titles, which must never move the
    cursor or recolour a terminal; code spans are shown without their backticks."""
    cells: list[tuple[str, ...]] = [HEADER]
    for row in rows:
        action = row["action"] + (" (over a status set by hand)" if row.get("tampered") else "")
        fields = (
            row["at"].replace("+00:00", "Z"),
            row["sha"][:8],
            row["check"],
            row["verdict"],
            action,
            plain(row["reason"] or ""),
        )
        cells.append(tuple(printable(field) for field in fields))
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER) - 1)]
    lines = []
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        lines.append("  ".join([*padded, line[-1]]))
    return lines


def run(args: argparse.Namespace) -> int:
    from bot.service.record import StateError, read_history

    settings = local_settings()
    try:
        project, iid = parse_reference(args.merge_request)
    except ValueError as exc:
        return fail(str(exc))
    try:
        if settings.database_url:  # the fleet's record (README "Running more than one")
            from bot.service.pgrecord import read_history_pg

            rows = asyncio.run(read_history_pg(settings.database_url, project, iid, args.limit))
        else:
            rows = asyncio.run(read_history(settings.state_dir, project, iid, args.limit))
    except StateError as exc:
        return fail(str(exc), 1)
    if not rows:
        print(printable(f"no decisions recorded for {args.merge_request} in {settings.state_dir}"))
        return 0
    lines = table(rows)
    print(lines[0])
    for row, line in zip(rows, lines[1:], strict=True):
        print(line)
        if args.rules:
            for detail in rules(row):
                print(printable(detail))
    return 0


_MARKS = {"passed": "✓", "failed": "✗", "undecided": "?", "not_applicable": "○"}


def rules(row: dict[str, Any]) -> list[str]:
    """A recorded decision's policy and rule tree, indented under its line (`--rules`)."""
    from bot.policy.explanation import explain_outcome
    from bot.policy.model import Outcome

    lines = [f"    policy: {row.get('policy_path') or '?'}"]
    if not row.get("outcome"):
        return lines
    shown = explain_outcome(
        Outcome.from_dict(row["outcome"]), applicable=bool(row.get("applicable", True))
    )
    for item in shown.rows:
        lines.append(f"    {'  ' * item.depth}{_MARKS[item.mark]} {plain(item.text)}")
    return lines

"""`python -m bot link PROJECT!IID`: a signed link to an MR's details page, as the server makes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.cli.base import fail, local_settings


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("link", help="print a signed link to an MR's details page")
    parser.add_argument("merge_request", metavar="PROJECT!IID")
    parser.add_argument("--ttl", type=float, help="seconds the link stays valid (default LINK_TTL)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bot.service.details import mint_link
    from bot.service.record import StateError

    settings = local_settings()
    try:
        link = mint_link(settings, args.merge_request, ttl=args.ttl)
    except ValueError as exc:
        return fail(str(exc))
    except StateError as exc:
        return fail(str(exc), 1)
    print(link)
    if not settings.public_url:
        print("note: PUBLIC_URL is not set; put the bot's address before it", file=sys.stderr)
    return 0

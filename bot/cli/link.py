"""`python -m bot link PROJECT!IID`: a signed link to an MR's details page, as the server makes."""

from __future__ import annotations

import argparse
from typing import Any

from bot.cli.base import fail, local_settings
from bot.keys import parse_reference


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "link", help="print a signed link to an MR's details page (needs PUBLIC_URL)"
    )
    parser.add_argument("merge_request", metavar="PROJECT!IID")
    parser.add_argument("--ttl", type=float, help="seconds the link stays valid (default LINK_TTL)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bot.service.details import mint_link
    from bot.service.record import StateError

    settings = local_settings()
    try:
        parse_reference(args.merge_request)
    except ValueError as exc:
        return fail(str(exc))
    if not settings.public_url:  # a path alone is no link anyone can open
        return fail(NO_PUBLIC_URL)
    try:
        link = mint_link(settings, args.merge_request, ttl=args.ttl)
    except StateError as exc:
        return fail(str(exc), 1)
    print(link)
    return 0


NO_PUBLIC_URL = (
    "PUBLIC_URL is not set, so there is no address to link to: set it as the server has it "
    "(the bot's address as people reach it, e.g. PUBLIC_URL=https://bot.example.com)"
)

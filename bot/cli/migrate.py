"""`python -m bot migrate`: bring DATABASE_URL's schema up to date and, with --from-state-dir,
copy the embedded SQLite record into it (README "Running more than one")."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bot.cli.base import fail, local_settings


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="migrate DATABASE_URL's schema; --from-state-dir copies the SQLite record into it",
    )
    parser.add_argument(
        "--from-state-dir",
        metavar="DIR",
        type=Path,
        help="copy the decision record, known projects and link key of this STATE_DIR",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import asyncpg

    from bot.config import database_passwords, masked_url
    from bot.service.database import DB_ERRORS
    from bot.service.record import StateError
    from bot.service.schema import SchemaError, migrate_url
    from bot.service.transfer import copy_record

    settings = local_settings()
    url = settings.database_url
    if url is None:
        return fail("DATABASE_URL is not set: migrate moves state into PostgreSQL")

    def scrubbed(text: str) -> str:  # an error's text never carries the URL's password
        for secret in database_passwords(url):
            text = text.replace(secret, "***")
        return text

    try:
        if args.from_state_dir is not None:
            copied = asyncio.run(copy_record(args.from_state_dir, url))
            print(f"{copied} from {args.from_state_dir} into {masked_url(url)}")
        else:
            applied = asyncio.run(migrate_url(url))
            done = f"applied versions {applied}" if applied else "already up to date"
            print(f"schema of {masked_url(url)}: {done}")
    except (StateError, SchemaError) as exc:
        return fail(scrubbed(str(exc)), 1)
    except (asyncpg.PostgresError, *DB_ERRORS) as exc:
        return fail(scrubbed(f"PostgreSQL at {masked_url(url)}: {type(exc).__name__}: {exc}"), 1)
    return 0

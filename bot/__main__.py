"""`python -m bot <command>`: the commands (README, "Commands"), and nothing else."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings
from bot.service.record import StateError
from bot.terminal import TerminalStream, printable


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {printable(message)}", file=sys.stderr)
    return code


def _settings(*, quiet: bool = False) -> Settings:
    """Settings, and logging set up; `quiet` (one-shot commands) logs only errors unless debug."""
    settings = load_settings()
    from bot.logs import configure_logging

    level = settings.log_level
    if quiet and level != "debug":
        level = "error"
    configure_logging(
        fmt=settings.log_format,
        level=level,
        secrets=_secrets(settings),
    )
    return settings


def _secrets(settings: Settings) -> list[str]:
    """Every configured secret: logs mask them wherever they would appear."""
    return [
        s
        for s in (
            settings.gitlab_token,
            settings.webhook_secret,
            settings.status_check_secret,
            settings.link_secret,
        )
        if s
    ]


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.logs import get_logger
    from bot.policy.model import PolicyLoadError
    from bot.service.app import create_app
    from bot.service.policy_store import PolicyStore

    settings = _settings()
    log = get_logger("bot")
    if not settings.policy_dir.is_dir():
        return _fail(f"POLICY_DIR {str(settings.policy_dir)!r} is not a folder")
    store = PolicyStore(settings.policy_dir)
    try:
        policies = store.load()
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: invalid policy: {printable(problem)}", file=sys.stderr)
        return 1
    if not policies.policies:
        log.warning("no_policies", policy_dir=str(settings.policy_dir))
    if settings.webhook_secret is None:
        log.warning(
            "webhook_secret_unset",
            advice="webhooks are accepted without a token; set WEBHOOK_SECRET to the hooks' secret",
        )
    log.info(
        "starting",
        host=settings.host,
        port=settings.port,
        gitlab=settings.gitlab_url,
        checks=sorted(p.check for p in policies.policies),
    )
    try:
        web.run_app(
            create_app(settings, store),
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            shutdown_timeout=settings.shutdown_deadline,
        )
    except StateError as exc:  # STATE_DIR unusable: found while starting, before any traffic
        return _fail(str(exc), 1)
    except OSError as exc:  # the address is taken or not ours: say so, no traceback
        import errno
        import socket

        listen_errors = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
        if exc.errno not in listen_errors and not isinstance(exc, socket.gaierror):
            raise
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 1)
    log.info("stopped")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bot.policy import validate_paths

    paths = args.paths or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return _fail(f"no such file or folder: {', '.join(missing)}")
    problems = validate_paths(paths)
    for problem in problems:
        # One line each, whatever the message quotes from the file: shown, never obeyed.
        print(printable(problem))
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return 1
    for warning in _unreadable_references(paths):
        print(f"warning: {warning}")
    print("policies are valid")
    return 0


def _unreadable_references(paths: Sequence[str]) -> list[str]:
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


def cmd_test(args: argparse.Namespace) -> int:
    from bot.policy import run_tests

    paths = args.paths or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return _fail(f"no such file or folder: {', '.join(missing)}")
    _passed, failed = run_tests(paths, TerminalStream(sys.stdout))
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from bot.cli.explain import explain, use_color

    settings = _settings(quiet=True)
    color = use_color(sys.stdout)
    out = TerminalStream(sys.stdout, colour=color)
    return explain(settings, args.merge_request, color=color, out=out)  # type: ignore[arg-type]


def cmd_register(args: argparse.Namespace) -> int:
    from bot.cli.register import register

    settings = _settings()
    return register(
        settings,
        args.target,
        url=args.url,
        dry_run=args.dry_run,
        require=args.require,
        update_secrets=args.update_secrets,
        prune=args.prune,
        group=args.group,
        out=TerminalStream(sys.stdout),  # type: ignore[arg-type]
    )


def _local_settings() -> Settings:
    """Settings for commands that read only STATE_DIR (and the link settings): they must work
    on a machine without GitLab's URL or token, so those two are filled with placeholders."""
    from bot.logs import configure_logging

    env = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_")}
    env.update(GITLAB_URL="http://gitlab.invalid", GITLAB_TOKEN="unused")
    settings = load_settings(env)
    secrets = [s for s in _secrets(settings) if s != env["GITLAB_TOKEN"]]  # not the placeholder
    configure_logging(fmt=settings.log_format, level="error", secrets=secrets)
    return settings


def cmd_history(args: argparse.Namespace) -> int:
    import asyncio

    from bot.keys import parse_reference
    from bot.service.record import history_line, read_history

    settings = _local_settings()
    try:
        project, iid = parse_reference(args.merge_request)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        rows = asyncio.run(read_history(settings.state_dir, project, iid, args.limit))
    except StateError as exc:
        return _fail(str(exc), 1)
    if not rows:
        print(printable(f"no decisions recorded for {args.merge_request} in {settings.state_dir}"))
    for row in rows:
        print(history_line(row))
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from bot.service.details import mint_link

    settings = _local_settings()
    try:
        link = mint_link(settings, args.merge_request, ttl=args.ttl)
    except ValueError as exc:
        return _fail(str(exc))
    except StateError as exc:
        return _fail(str(exc), 1)
    print(link)
    if not settings.public_url:
        print("note: PUBLIC_URL is not set; put the bot's address before it", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="GitLab external status check bot: YAML policies in, verdicts out.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the service (settings from the environment)")
    serve.set_defaults(func=cmd_serve)
    validate = commands.add_parser("validate", help="check policy files; print file:line: message")
    validate.add_argument("paths", nargs="*", help="policy files or folders (default: policies)")
    validate.set_defaults(func=cmd_validate)
    test = commands.add_parser("test", help="run the policies' test cases")
    test.add_argument("paths", nargs="*", help="policy/test files or folders (default: policies)")
    test.set_defaults(func=cmd_test)
    explain = commands.add_parser("explain", help="evaluate a live MR read-only, e.g. group/app!42")
    explain.add_argument("merge_request", metavar="PROJECT!IID")
    explain.set_defaults(func=cmd_explain)
    register = commands.add_parser(
        "register",
        help="create or update the status checks and webhook of a project or group's projects",
    )
    register.add_argument("target", metavar="PROJECT_OR_GROUP", help="path or id")
    register.add_argument("--url", help="the bot's webhook URL (default: PUBLIC_URL + /webhook)")
    register.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    register.add_argument(
        "--require", action="store_true", help='turn on "Status checks must succeed"'
    )
    register.add_argument(
        "--update-secrets",
        action="store_true",
        help="re-send WEBHOOK_SECRET and STATUS_CHECK_SECRET (GitLab never shows them back)",
    )
    register.add_argument(
        "--prune", action="store_true", help="delete status checks at the bot with no policy"
    )
    register.add_argument(
        "--group", action="store_true", help="PROJECT_OR_GROUP names a group (for a numeric id)"
    )
    register.set_defaults(func=cmd_register)
    history = commands.add_parser(
        "history", help="print an MR's recorded decisions, newest first (reads STATE_DIR only)"
    )
    history.add_argument("merge_request", metavar="PROJECT!IID")
    history.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    history.set_defaults(func=cmd_history)
    link = commands.add_parser("link", help="print a signed link to an MR's details page")
    link.add_argument("merge_request", metavar="PROJECT!IID")
    link.add_argument("--ttl", type=float, help="seconds the link stays valid (default LINK_TTL)")
    link.set_defaults(func=cmd_link)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `history ... | head`: the reader has gone; no traceback, no "error:" for it.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python's documented idiom
        return 0


if __name__ == "__main__":
    sys.exit(main())

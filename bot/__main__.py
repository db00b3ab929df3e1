"""`python -m bot <command>`: the commands of DESIGN 4.1, and nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _settings() -> Settings:
    settings = load_settings()
    from bot.logs import configure_logging

    configure_logging(
        fmt=settings.log_format,
        level=settings.log_level,
        secrets=[
            s
            for s in (settings.gitlab_token, settings.webhook_secret, settings.status_check_secret)
            if s
        ],
    )
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.app import create_app
    from bot.logs import get_logger
    from bot.policy.model import PolicyLoadError
    from bot.policy_store import PolicyStore

    settings = _settings()
    log = get_logger("bot")
    if not settings.policy_dir.is_dir():
        return _fail(f"POLICY_DIR {str(settings.policy_dir)!r} is not a folder")
    store = PolicyStore(settings.policy_dir)
    try:
        policies = store.load()
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: invalid policy: {problem}", file=sys.stderr)
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
    web.run_app(
        create_app(settings, store),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.shutdown_deadline,
    )
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
        print(problem)
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", file=sys.stderr)
        return 1
    print("policies are valid")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from bot.policy import run_tests

    paths = args.paths or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return _fail(f"no such file or folder: {', '.join(missing)}")
    _passed, failed = run_tests(paths, sys.stdout)
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from bot.explain import explain

    settings = _settings()
    return explain(settings, args.merge_request, color=sys.stdout.isatty())


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

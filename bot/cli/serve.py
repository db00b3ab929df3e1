"""`python -m bot serve`: run the service, with every setting from the environment."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Any

from bot.cli.base import fail, settings_from_env
from bot.terminal import printable


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the service (settings from the environment)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.logs import get_logger
    from bot.policy.model import PolicyLoadError
    from bot.service.app import create_app
    from bot.service.database import DatabaseError
    from bot.service.policy_store import PolicyStore
    from bot.service.record import StateError

    settings = settings_from_env()
    log = get_logger("bot")
    if not settings.policy_dir.is_dir():
        return fail(f"POLICY_DIR {str(settings.policy_dir)!r} is not a folder")
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
    try:
        sockets = listen(settings.host, settings.port)
    except OSError as exc:  # the address is taken or not ours: say so, before anything else
        if exc.errno not in _LISTEN_ERRORS and not isinstance(exc, socket.gaierror):
            raise
        return fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 1)
    log.info(
        "starting",
        host=settings.host,
        port=sockets[0].getsockname()[1],
        gitlab=settings.gitlab_url,
        checks=sorted(p.check for p in policies.policies),
    )
    try:
        web.run_app(
            create_app(settings, store),
            sock=sockets,
            print=None,
            access_log=None,
            shutdown_timeout=settings.shutdown_deadline,
        )
    except StateError as exc:  # STATE_DIR unusable: found while starting, before any traffic
        return fail(str(exc), 1)
    except DatabaseError as exc:  # DATABASE_URL unusable, said in one line before any traffic
        return fail(str(exc), 1)
    finally:
        for sock in sockets:
            sock.close()
    log.info("stopped")
    return 0


_LISTEN_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def listen(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets on every address HOST names, made as aiohttp would make them
    (SO_REUSEADDR; an IPv6 socket for IPv6 only). They are made before the app starts, so a
    taken port is the first thing reported: no GitLab call, nothing written to STATE_DIR."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets

"""structlog set-up: JSON lines in production, readable lines in a terminal, never a secret."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, cast

import structlog

_SENSITIVE_KEYS = frozenset(
    {"token", "secret", "password", "authorization", "private-token", "private_token"}
)


class _Redactor:
    """Masks the configured secrets wherever they appear, and drops keys that name a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short "secrets" would mask ordinary words; real tokens are long.
        self.secrets = tuple(
            sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        )

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "[redacted]")
            return value
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key.lower() in _SENSITIVE_KEYS:
                event_dict[key] = "[redacted]"
            elif self.secrets:
                event_dict[key] = self._clean(event_dict[key])
        return event_dict


class _LineLogger:
    """Writes each rendered line to the given stream, or to whatever sys.stderr is *now*.

    Resolving stderr at write time keeps logging working when a test harness or a
    daemoniser swaps the stream after configuration.
    """

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        # A closed stream must never turn a request into a 500.
        with contextlib.suppress(ValueError, OSError):
            print(message, file=stream, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(
    *, fmt: str = "json", level: str = "info", secrets: Iterable[str] = (), stream: Any = None
) -> None:
    """Configure structlog once for the process; later calls replace the configuration."""
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _Redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_args: _LineLogger(stream),
        cache_logger_on_first_use=False,
    )
    global _generation
    _generation += 1


# Bumped by every configure_logging: module loggers rebuild their structlog logger once after it.
_generation = 0


class _ModuleLogger:
    """A module's logger: its structlog logger is built on first use and kept until the next
    `configure_logging`.

    structlog's own choices do not fit: without `cache_logger_on_first_use` it rebuilds the bound
    logger on every call (a log line at a filtered-out level still costs that), and with it a
    logger used once ignores every later configuration (tests reconfigure per test).
    """

    __slots__ = ("_bound", "_built_for", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._built_for = -1

    def __getattr__(self, attr: str) -> Any:
        if self._built_for != _generation:
            self._bound = structlog.get_logger(self._name).bind()
            self._built_for = _generation
        return getattr(self._bound, attr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return cast(structlog.typing.FilteringBoundLogger, _ModuleLogger(name))

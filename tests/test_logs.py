"""Module loggers keep their structlog logger between calls, yet follow every configure_logging."""

from __future__ import annotations

import io
import json

from bot.logs import configure_logging, get_logger


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_used_module_logger_follows_a_later_configuration() -> None:
    log = get_logger("tests.logs")
    first, second, third = io.StringIO(), io.StringIO(), io.StringIO()

    configure_logging(fmt="json", level="info", stream=first)
    log.info("one", n=1)
    log.info("two", n=2)  # the logger built for the first call serves this one too
    configure_logging(fmt="json", level="warning", stream=second, secrets=["s3cr3t-value"])
    log.info("filtered")
    log.warning("three", token_hint="s3cr3t-value")
    configure_logging(fmt="json", level="info", stream=third)
    log.info("four")

    assert [e["event"] for e in lines(first)] == ["one", "two"]
    assert [(e["event"], e["level"]) for e in lines(second)] == [("three", "warning")]
    assert lines(second)[0]["token_hint"] == "[redacted]"  # the new secrets apply at once
    assert [e["event"] for e in lines(third)] == ["four"]


def test_loggers_created_before_any_configuration_use_it_once_it_exists() -> None:
    log = get_logger("tests.logs.early")
    stream = io.StringIO()
    configure_logging(fmt="json", level="error", stream=stream)
    log.warning("ignored")
    log.error("kept", detail="x")
    assert [(e["event"], e["detail"]) for e in lines(stream)] == [("kept", "x")]

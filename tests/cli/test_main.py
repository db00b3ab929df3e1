"""`python -m bot` itself: the commands it offers."""

from __future__ import annotations

from tests.processes import (
    run_bot,
)


def test_help_lists_the_four_commands() -> None:
    result = run_bot("--help")
    assert result.returncode == 0
    for command in ("serve", "validate", "test", "explain"):
        assert command in result.stdout
    assert result.stderr == ""

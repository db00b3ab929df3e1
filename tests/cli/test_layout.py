"""The CLI by command (issue 11 item 1, STYLE.md section 3): one `bot/cli/<command>.py` per
command, each with `add_parser(subparsers)` and `run(args) -> int`; `bot/__main__.py` only
assembles them, and both `python -m bot` and the `gitlab-status-bot` script reach them."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import build_parser

REPO = Path(__file__).resolve().parents[2]
# command -> module under bot/cli/ (`test` is not `test.py`: pytest would collect it)
COMMANDS = {
    "serve": "serve",
    "validate": "validate",
    "test": "policy_tests",
    "explain": "explain",
    "preview": "preview",
    "register": "register",
    "history": "history",
    "link": "link",
    "migrate": "migrate",
}
ARGUMENTS = {
    "explain": ["g/a!1"],
    "preview": ["--policies", "p"],
    "register": ["g/a"],
    "history": ["g/a!1"],
    "link": ["g/a!1"],
}


@pytest.mark.parametrize(("command", "module_name"), COMMANDS.items())
def test_each_command_is_a_module_with_add_parser_and_run(command: str, module_name: str) -> None:
    assert not module_name.startswith("test"), "pytest would collect it"
    module = importlib.import_module(f"bot.cli.{module_name}")
    assert module.__doc__ and module.__doc__.strip(), "every module says what it is for"
    subparsers = argparse.ArgumentParser().add_subparsers()
    module.add_parser(subparsers)
    assert list(subparsers.choices) == [command]
    args = build_parser().parse_args([command, *ARGUMENTS.get(command, [])])
    assert args.run is module.run


def test_main_only_assembles_the_commands() -> None:
    tree = ast.parse((REPO / "bot" / "__main__.py").read_text())
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions == ["build_parser", "main"]
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bot")
    }
    assert imported == {"bot.cli"}, imported
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(subparsers.choices) == sorted(COMMANDS)


def test_the_console_script_reaches_the_same_commands() -> None:
    script = Path(sys.executable).parent / "gitlab-status-bot"
    if not script.exists():
        pytest.skip("the package is not installed with its scripts (pip install -e .)")
    result = subprocess.run(
        [str(script), "validate", str(REPO / "policies")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "policies are valid\n", "")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout

"""Messages (issue 11 item 8), pinned word for word: the RE2 hint only where RE2 is the reason,
whole numbers named with the value seen, a single-quotes hint for YAML escapes in double quotes,
STATE_DIR that is a file, a taken port reported before any GitLab call, and /readyz telling a
rejected token from an unreachable GitLab."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.policy import PolicyLoadError, load_policy_text
from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab
from tests.processes import run_bot as bot

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"
HINT = " (RE2 syntax: no lookaround or backreferences)"


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_text(textwrap.dedent(text).lstrip("\n"), "p.yml")
    return [f"{problem.line}: {problem.message}" for problem in caught.value.problems]


# -- regexes -------------------------------------------------------------------------------------


def test_the_re2_hint_only_for_lookaround_and_backreferences() -> None:
    assert problems_of(
        r"""
        require:
          - title: '(?=feat)'
          - title: '(?<!wip)fix'
          - commits: {message: '(\w+) \1'}
          - title: '(?P<t>a)(?P=t)'
          - title: '(?<t>a)\k<t>'
          - description: '(unclosed'
          - title: 'a{2,1}'
          - title: '[z-a]'
        """
    ) == [
        "2: bad regex in `title` `(?=feat)`: invalid perl operator: (?=" + HINT,
        "3: bad regex in `title` `(?<!wip)fix`: invalid perl operator: (?<!" + HINT,
        r"4: bad regex in `commits.message` `(\w+) \1`: invalid escape sequence: \1" + HINT,
        "5: bad regex in `title` `(?P<t>a)(?P=t)`: invalid perl operator: (?P" + HINT,
        r"6: bad regex in `title` `(?<t>a)\k<t>`: invalid escape sequence: \k" + HINT,
        "7: bad regex in `description` `(unclosed`: missing ): (unclosed",
        "8: bad regex in `title` `a{2,1}`: invalid repetition size: {2,1}",
        "9: bad regex in `title` `[z-a]`: invalid character class range: z-a",
    ]


# -- numbers -------------------------------------------------------------------------------------


def test_a_whole_number_is_asked_for_with_the_value_seen() -> None:
    assert problems_of(
        """
        require:
          - changed_lines: {max: 2.5}
          - changed_files_count: {max: lots}
          - approvals: {count: 1.0}
        """
    ) == [
        "2: `changed_lines.max` must be a whole number, got 2.5",
        "3: `changed_files_count.max` must be a whole number, got a string",
        "4: `approvals.count` must be a whole number, got 1.0",
    ]


# -- YAML escapes --------------------------------------------------------------------------------


def test_a_backslash_in_double_quotes_gets_the_single_quotes_hint() -> None:
    assert problems_of(
        r"""
        check: t
        require:
          - title: "^feat\(x\)"
        """
    ) == [
        "3: YAML syntax error: found unknown escape character '(' (while scanning a "
        "double-quoted scalar at line 3); in double quotes a backslash starts an escape: "
        r"write it in single quotes, '^feat\(x\)'"
    ]


def test_the_hint_without_an_example_when_single_quotes_would_not_do() -> None:
    assert problems_of(
        r"""
        require:
          - title: "it's \d"
        """
    ) == [
        "2: YAML syntax error: found unknown escape character 'd' (while scanning a "
        "double-quoted scalar at line 2); in double quotes a backslash starts an escape: "
        "write it in single quotes (and a ' inside as '')"
    ]


# -- STATE_DIR that is a file --------------------------------------------------------------------


def test_a_state_dir_that_is_a_file_is_not_a_folder(gitlab: FakeGitLab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be\n")
    message = f"error: STATE_DIR '{state}' is not a folder"
    serve = bot(
        "serve",
        GITLAB_URL=gitlab.url,
        GITLAB_TOKEN=TOKEN,
        POLICY_DIR=SHIPPED,
        STATE_DIR=state,
        HOST="127.0.0.1",
        PORT=0,
        LOG_LEVEL="error",
    )
    assert (serve.returncode, serve.stderr) == (1, message + "\n")
    for command in ("history", "link"):
        result = bot(command, "1!1", STATE_DIR=state, PUBLIC_URL="https://bot.example.com")
        assert (result.returncode, result.stdout, result.stderr) == (1, "", message + "\n")


# -- a taken port --------------------------------------------------------------------------------


async def test_a_taken_port_is_reported_before_any_gitlab_call(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asyncio.to_thread(
            bot,
            "serve",
            GITLAB_URL=gitlab.url,
            GITLAB_TOKEN=TOKEN,
            POLICY_DIR=SHIPPED,
            STATE_DIR=tmp_path / "state",
            HOST="127.0.0.1",
            PORT=port,
            LOG_LEVEL="error",
        )
    assert result.returncode == 1
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert gitlab.calls == []  # not even GET /version
    assert not (tmp_path / "state").exists()  # nor anything written


# -- /readyz ---------------------------------------------------------------------------------------


async def readyz_problem(start_bot: Callable[..., Any], **settings: Any) -> str:
    bot = await start_bot(**settings)
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    [problem] = [p for p in body["problems"] if "GitLab" in p]
    return str(problem)


async def test_readyz_tells_a_rejected_token_from_an_unreachable_gitlab(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    assert await readyz_problem(start_bot, gitlab_token="glpat-revoked-0000000000") == (
        "GitLab rejects the token (401 on GET /version): GITLAB_TOKEN is wrong, expired or revoked"
    )
    await gitlab.close()  # nothing listens there any more
    problem = await readyz_problem(start_bot, gitlab_timeout=0.5)
    assert problem.startswith("GitLab is unreachable: ") and "token" not in problem, problem

"""Terminal escapes (issue 10 item 7): what GitLab, a policy file or a test file says is printed
inert by every command that writes to a terminal (`explain`, `history`, `validate`, `test`).

Every command runs as a real subprocess; its raw output must hold no control character but the
line breaks (and, on a terminal, the bot's own colour codes): no cursor moves, screen clears,
title changes (OSC), bells, carriage returns, C1 controls, bidi overrides; and a lone surrogate
must not crash the output with a traceback. What was escaped stays visible, as `\\x1b`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import payloads
from tests.conftest import TOKEN, write_policies
from tests.fakegitlab import FakeGitLab
from tests.processes import REPO, bot_cmd, clean_env, explain_process

# A screen clear, an OSC window title ended by BEL, a carriage return and backspace, a C1 CSI,
# a right-to-left override, a lone surrogate and a NUL.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\r\x08\x9b31m\u202eevil\ud800\x00"
OWN_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def controls(text: str, *, colour: bool = False) -> list[str]:
    """The control, format and surrogate characters in `text` (line breaks aside)."""
    if colour:
        text = OWN_COLOURS.sub("", text)
    return [repr(c) for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs")]


def decoded(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    return text


def seed_hostile(gitlab: FakeGitLab) -> None:
    gitlab.add_project(7, "group/app")
    gitlab.add_mr(
        7,
        42,
        title=f"Add login {HOSTILE}",
        author={"id": 1, "username": f"alice{HOSTILE}"},
        labels=[f"bug{HOSTILE}"],
        source_branch=f"feature{HOSTILE}",
        pipeline="running",
    )
    gitlab.add_status_check(7, "conventional-title")
    gitlab.add_status_check(7, f"other-service{HOSTILE}")


async def test_explain_prints_hostile_mr_fields_inert(gitlab: FakeGitLab) -> None:
    seed_hostile(gitlab)
    for tty in (False, True):
        code, out, err = await explain_process(gitlab, "group/app!42", tty=tty)
        out = out.replace("\r\n", "\n") if tty else out  # the terminal's own line ends
        assert "Traceback" not in err, err[-2000:]
        assert code == 0, err
        assert controls(out, colour=tty) == [], (tty, out[:3000])
        assert "\\x1b[2J" in out  # shown, not acted on
        assert "Add login" in out.splitlines()[0]


def test_validate_prints_hostile_keys_and_file_names_inert(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "evil\x1b[31m\r.yml").write_text(
        'check: "evil\\e[2J"\nrequire:\n  - "ti\\e]0;x\\atle\\u202e": x\n'
        '  - title: "\\e[1m(unclosed"\n'
    )
    result = subprocess.run(
        bot_cmd("validate", str(folder)), cwd=REPO, env=clean_env(), capture_output=True
    )
    out, err = decoded(result.stdout), decoded(result.stderr)
    assert "Traceback" not in err, err[-2000:]
    assert result.returncode == 1, err
    assert controls(out + err) == [], out + err
    assert "\\x1b" in out


def test_test_prints_hostile_case_names_and_evidence_inert(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "policies",
        {"title.yml": "check: conventional-title\nrequire:\n  - title: '^feat: '\n"},
    )
    (folder / "title.test.yaml").write_text(
        "policy: conventional-title\ncases:\n"
        '  - name: "case \\e[2J\\r\\x9b1m\\u202e"\n'
        '    mr: {title: "fix \\e]0;pwned\\a \\u202e"}\n'
        "    expect: passed\n"
    )
    result = subprocess.run(
        bot_cmd("test", str(folder)), cwd=REPO, env=clean_env(), capture_output=True
    )
    out, err = decoded(result.stdout), decoded(result.stderr)
    assert "Traceback" not in err, err[-2000:]
    assert result.returncode == 1, out + err
    assert controls(out + err) == [], out + err
    assert "FAIL conventional-title: case \\x1b[2J" in out
    assert "0 passed, 1 failed" in out


async def test_history_prints_hostile_reasons_inert(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "conventional-title")
    gitlab.add_mr(1, 1, sha="1" * 40, title=f"Add login {HOSTILE}", source_branch="feature")
    bot = await start_bot()
    assert (await bot.deliver(payloads.merge_request_hook(sha="1" * 40)))[0] == 202
    await bot.settle()
    await bot.stop()
    process = await asyncio.create_subprocess_exec(
        *bot_cmd("history", "1!1"),
        cwd=REPO,
        env=clean_env(STATE_DIR=str(bot.settings.state_dir), GITLAB_TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    raw_out, raw_err = await process.communicate()
    out, err = decoded(raw_out), decoded(raw_err)
    assert process.returncode == 0, err
    assert "conventional-title" in out
    assert controls(out + err) == [], out
    assert "\\x1b[2J" in out


def test_printable_keeps_text_and_own_colours_and_escapes_the_rest() -> None:
    from bot.terminal import printable

    assert (
        printable("feat: add login — ✓ ünïcødé 👍 \ue000")
        == "feat: add login — ✓ ünïcødé 👍 \ue000"
    )
    escaped = printable(HOSTILE)
    assert controls(escaped) == []
    assert printable(escaped) == escaped  # idempotent
    assert printable("a\nb") == "a\\x0ab" and printable("a\nb", newlines=True) == "a\nb"
    coloured = printable("\x1b[1mbold\x1b[0m \x1b]0;t\x07", colour=True)
    assert coloured == "\x1b[1mbold\x1b[0m \\x1b]0;t\\x07"

"""The tree of outcomes and fixes is computed once, in bot/policy/explanation.py (issue 11
item 1): its rows (depth, mark, text, the fix to show) and the fixes to pass. `explain`, the
details page, the MR note and the logs only render them, so they show the same rules, marks and
fixes for the same MR. Undecided outcomes are `?` / "undecided" everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bot.policy import evaluate, load_policy_text, make_facts, render_verdict
from bot.policy.explanation import Row, explanation, plain, spans
from bot.policy.model import Outcome
from bot.service.app import RECORD
from bot.service.details import LINK_KEY
from bot.service.links import signed_link
from tests import payloads
from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab, diff_file

REPO = Path(__file__).resolve().parents[2]
SHA = "5" * 40

SIZE_OR_HOTFIX = """\
check: demo
require:
  - pipeline: success
  - any:
      - changed_lines: {max: 400}
      - labels: {any: [hotfix]}
"""


def big(**facts: Any) -> Any:
    return make_facts(changed_files=[{"path": "src/a.py", "additions": 500}], **facts)


# -- the rows ------------------------------------------------------------------------------------


def test_rows_carry_depth_mark_text_and_the_fix_worth_showing() -> None:
    shown = explanation(evaluate(load_policy_text(SIZE_OR_HOTFIX), big(pipeline="success")))
    assert shown.rows == (
        Row(0, "passed", None, "pipeline: the pipeline is success"),
        Row(
            0,
            "failed",
            None,
            "any: none of 2 rules holds",
            "reduce the change to at most 400 lines or add label hotfix",
        ),
        Row(
            1,
            "failed",
            None,
            "changed_lines: 500 > max 400",
            "reduce the change to at most 400 lines",
        ),
        Row(1, "failed", None, "labels: has none of hotfix", "add label hotfix"),
    )
    assert [row.text for row in shown.failing] == [
        "changed_lines: 500 > max 400",
        "labels: has none of hotfix",
    ]
    assert shown.fixes == ("reduce the change to at most 400 lines or add label hotfix",)


def test_a_named_rule_leads_its_text() -> None:
    policy = load_policy_text("require:\n  - {name: conventional, title: '^feat'}\n")
    (row,) = explanation(evaluate(policy, make_facts(title="nope"))).rows
    assert (row.rule, row.evidence) == ("conventional", 'title: "nope" does not match `^feat`')
    assert row.text == 'conventional — title: "nope" does not match `^feat`'


def test_an_undecided_rule_is_marked_undecided_not_failed() -> None:
    policy = load_policy_text("check: demo\nrequire:\n  - changed_lines: {max: 10}\n")
    facts = make_facts(changed_files=[{"path": "a", "additions": 3}], changed_files_truncated=True)
    verdict = evaluate(policy, facts)
    (row,) = explanation(verdict).rows
    assert row.mark == "undecided"
    assert render_verdict(verdict).splitlines()[1] == (
        "  ? changed_lines: at least 3, so max 10 cannot be confirmed: GitLab listed 1 of 1+ files"
    )


def test_a_policy_that_does_not_apply_shows_why_without_a_failure_mark_or_fix() -> None:
    policy = load_policy_text(
        "applies_to: {target_branches: [main]}\nrequire: [{pipeline: success}]"
    )
    verdict = evaluate(policy, make_facts(target_branch="dev"))
    shown = explanation(verdict)
    assert shown.rows == (
        Row(0, "not_applicable", "target_branches", "target branch dev is not one of main"),
    )
    assert (shown.failing, shown.fixes) == ((), ())
    assert render_verdict(verdict).splitlines()[1] == (
        "  ○ target_branches — target branch dev is not one of main"
    )


def test_the_recorded_outcome_gives_the_same_rows() -> None:
    """The details page renders verdicts from the decision record (JSON): same rows."""
    verdict = evaluate(load_policy_text(SIZE_OR_HOTFIX), big(pipeline="running"))
    assert verdict.outcome is not None
    again = Outcome.from_dict(json.loads(json.dumps(verdict.outcome.to_dict())))
    assert again == verdict.outcome.__class__(**{**vars(verdict.outcome), "negated_fix": None})
    assert explanation(verdict) == explanation(
        verdict.__class__(**{**vars(verdict), "outcome": again})
    )


def test_code_spans_are_code_on_the_page_and_plain_in_a_terminal() -> None:
    text = "all: 1 of 2 rules fail (`changed_lines`); title does not match `^feat`"
    assert spans(text) == [
        ("all: 1 of 2 rules fail (", False),
        ("changed_lines", True),
        ("); title does not match ", False),
        ("^feat", True),
    ]
    assert plain(text) == "all: 1 of 2 rules fail (changed_lines); title does not match ^feat"
    assert plain("an odd ` stays") == "an odd ` stays"


# -- one MR, four renderings -------------------------------------------------------------------

POLICY = """\
check: review
comment: on_failure
require:
  - name: small enough
    any:
      - changed_lines: {max: 10}
      - labels: {any: [hotfix]}
  - name: security approval
    approvals: {count: 1, from: {groups: [acme/nowhere]}}
  - pipeline: success
"""
SMALL_ENOUGH = "small enough — any: none of 2 rules holds"
CHANGED_LINES = "changed_lines: 500 > max 10"
LABELS = "labels: has none of hotfix"
PIPELINE = "pipeline: waiting for pipeline (running)"
FIXES = [
    "reduce the change to at most 10 lines or add label hotfix",
    "reduce the change to at most 10 lines",
    "add label hotfix",
    "get 1 more approval from acme/nowhere",
    "wait for the pipeline to finish (needs success)",
]


class Classes(HTMLParser):
    """The text of every element with a given class (nested ones included)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: dict[str, list[str]] = {}
        self._open: list[tuple[str, list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "br", "link", "img"):
            return
        classes = (dict(attrs).get("class") or "").split()
        title = dict(attrs).get("title")
        self._open.append((tag, classes + ([f"title={title}"] if title else [])))
        for name in self._open[-1][1]:
            self.found.setdefault(name, []).append("")

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        seen: set[str] = set()
        for _, classes in self._open:
            for name in classes:
                if name not in seen:
                    seen.add(name)
                    self.found[name][-1] += data

    def texts(self, name: str) -> list[str]:
        return [" ".join(text.split()) for text in self.found.get(name, [])]


async def test_terminal_page_note_and_log_show_the_same_rows_marks_and_fixes(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "review-policies"
    folder.mkdir()
    (folder / "review.yml").write_text(POLICY)
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "review")
    gitlab.add_mr(
        1,
        1,
        sha=SHA,
        title="feat: login",
        diffs=[diff_file("src/auth.py", additions=500)],
        approved_by=[{"id": 7, "username": "bob"}],  # in acme/nowhere? GitLab will not say
        head_pipeline={"id": 3, "sha": SHA, "status": "running"},
    )
    bot = await start_bot(policy_dir=folder)
    assert (await bot.deliver(payloads.merge_request_hook(sha=SHA)))[0] == 202
    await bot.settle()
    await bot.app[RECORD].flush()
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]

    # The terminal: `python -m bot explain`, a real process against the same GitLab.
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "GITLAB_URL": gitlab.url}
    env.update(GITLAB_TOKEN=TOKEN, POLICY_DIR=str(folder))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "explain", "acme/app!1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    tree = result.stdout.split("\nreview ", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    security = next(line for line in tree if "security approval" in line)
    assert security.startswith("  ? security approval — approvals: 0 of 1 from acme/nowhere (bob ")
    assert [line.strip() for line in tree if not line.lstrip().startswith("fix:")] == [
        f"✗ {SMALL_ENOUGH}",
        f"✗ {CHANGED_LINES}",
        f"✗ {LABELS}",
        security.strip(),
        f"✗ {PIPELINE}",
    ]
    assert [line.split("fix: ", 1)[1] for line in tree if "fix: " in line] == FIXES

    # The page: the same rows, marks and fixes; the undecided one as `?` titled "undecided".
    async with bot.session.get(bot.url + signed_link(bot.app[LINK_KEY], 1, 1, ttl=300)) as resp:
        html = await resp.text()
    page = Classes(html)
    assert page.texts("fix") == [f"fix: {fix}" for fix in FIXES]
    assert page.texts("mark") == ["✗", "✗", "✗", "?", "✗"]
    assert page.texts("title=undecided") == ["?"]
    assert page.texts("evidence")[3] == security.split(" — ", 1)[1]
    to_pass = [FIXES[0], FIXES[3], FIXES[4]]
    assert page.texts("to-pass") == to_pass

    # The note: the failing leaves (the undecided one as `?`) and the same fixes to pass.
    (note,) = [c.json["body"] for c in gitlab.calls_to("POST", "/notes") if c.status == 201]
    leaves = [line for line in note.splitlines() if re.match(r"- [✗?] ", line)]
    assert leaves == [
        f"- ✗ `{CHANGED_LINES}`",
        f"- ✗ `{LABELS}`",
        f"- ? `{security.strip()[2:]}` (undecided)",
        f"- ✗ `{PIPELINE}`",
    ]
    assert note.split("**To pass:**\n", 1)[1].splitlines()[: len(to_pass)] == [
        f"- `{fix}`" for fix in to_pass
    ]

    # The log: the `decision` event names the same fixes to pass.
    (decision,) = [e for e in logged if e["event"] == "decision"]
    assert decision["fixes"] == to_pass

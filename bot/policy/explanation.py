"""A verdict as it is shown: the rows of its rule tree, and the fixes worth offering.

Which rules to show, with which mark, and which fixes to offer is decided here once; `explain`
(the terminal), the details page, the MR note and the logs only render the result, so a verdict
reads the same wherever someone looks at it.

Evidence and fixes quote policy code between backticks (`changed_lines`, `^feat`): `spans` splits
them out so the page can show them as code and a terminal or note as plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from bot.policy.model import Outcome, Verdict
from bot.terminal import printable

# `undecided`: GitLab's answer cannot decide the rule (Outcome.unknown); it fails closed.
# `not_applicable`: a scope rule of `applies_to` that left the MR out (nothing to fix there).
Mark = Literal["passed", "failed", "undecided", "not_applicable"]


@dataclass(frozen=True)
class Row:
    """One rule of the tree, in the order it is read (a rule before the rules inside it)."""

    depth: int  # 0: a rule of `require` (or the scope rule that left the MR out)
    mark: Mark
    rule: str | None  # the rule's name, when the evidence does not already start with it
    evidence: str
    fix: str | None = None  # shown here: it fails, so does every rule above it, and it is news

    @property
    def text(self) -> str:
        return f"{self.rule} — {self.evidence}" if self.rule else self.evidence


@dataclass(frozen=True)
class Explanation:
    rows: tuple[Row, ...] = ()
    failing: tuple[Row, ...] = ()  # the failing predicates: what someone has to act on
    fixes: tuple[str, ...] = ()  # what would make the policy pass, each once


def leaf_text(outcome: Outcome) -> str:
    """A rule as one line: its evidence, led by its `name:` label when it was given one."""
    return _row(outcome, 0, "failed", None).text


def explanation(verdict: Verdict) -> Explanation:
    return explain_outcome(verdict.outcome, applicable=verdict.applicable)


def explain_outcome(outcome: Outcome | None, *, applicable: bool = True) -> Explanation:
    """The rows under a verdict's root outcome, the failing leaves and the fixes to pass. A root
    that holds (passed, or not applicable) has nothing to fix."""
    if outcome is None:
        return Explanation()
    blamed = not outcome.passed
    rows = tuple(row for child in outcome.children for row in _walk(child, 0, blamed, applicable))
    failing = tuple(
        _row(leaf, 0, "undecided" if leaf.unknown else "failed", None)
        for leaf in outcome.failing_leaves()
    )
    return Explanation(rows, failing, tuple(dict.fromkeys(_fixes(outcome))))


def _walk(outcome: Outcome, depth: int, blamed: bool, applicable: bool) -> Iterator[Row]:
    # `blamed`: every rule above fails, so a fix here helps (not under a holding `any`/`not`).
    mark: Mark
    if outcome.passed:
        mark = "passed"
    elif not applicable:
        mark = "not_applicable"
    else:
        mark = "undecided" if outcome.unknown else "failed"
    shows_fix = blamed and not outcome.passed and outcome.fix and _own_fix(outcome)
    yield _row(outcome, depth, mark, outcome.fix if shows_fix else None)
    for child in outcome.children:
        yield from _walk(child, depth + 1, blamed and not outcome.passed, applicable)


def _row(outcome: Outcome, depth: int, mark: Mark, fix: str | None) -> Row:
    labelled = not outcome.evidence.startswith(outcome.rule + ":")
    return Row(depth, mark, outcome.rule if labelled else None, outcome.evidence, fix)


def _own_fix(outcome: Outcome) -> bool:
    """A fix says something new at a leaf, and where alternatives are joined (`any`'s "or");
    an `all` whose fix only lists its children's says nothing they do not."""
    child_fixes = [child.fix for child in outcome.children if not child.passed and child.fix]
    return not child_fixes or outcome.fix != "; ".join(child_fixes)


def _fixes(outcome: Outcome) -> list[str]:
    """To pass: the fix of each failing rule of `require`, or the root's own (a bug, a rule
    that cannot be judged)."""
    if outcome.passed:
        return []
    fixes = [child.fix for child in outcome.children if not child.passed and child.fix]
    return fixes or ([outcome.fix] if outcome.fix else [])


_CODE = re.compile(r"`([^`\n]+)`")


def spans(text: str) -> list[tuple[str, bool]]:
    """`text` split into (part, is code): each `...` span is code, without its backticks."""
    parts: list[tuple[str, bool]] = []
    at = 0
    for match in _CODE.finditer(text):
        if match.start() > at:
            parts.append((text[at : match.start()], False))
        parts.append((match[1], True))
        at = match.end()
    if at < len(text):
        parts.append((text[at:], False))
    return parts


def plain(text: str) -> str:
    """`text` for a terminal or a note's code span: code spans without their backticks."""
    return _CODE.sub(r"\1", text)


_SIGNS: dict[Mark, tuple[str, str]] = {
    "passed": ("✓", "\033[32m"),
    "failed": ("✗", "\033[31m"),
    "undecided": ("?", "\033[31m"),
    "not_applicable": ("○", "\033[2m"),
}
_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def render_verdict(verdict: Verdict, color: bool = False) -> str:
    """The verdict for a terminal: a header line, then one line per row (✓ ✗, ? undecided,
    ○ not applicable) with its fix below it; code spans plain.

    Evidence quotes MR titles, paths and labels: every piece is made printable (bot/terminal.py)
    before it is coloured, so only the bot's own colour codes reach a terminal."""

    def paint(text: str, code: str) -> str:
        return f"{code}{printable(text)}{_RESET}" if color else printable(text)

    head: Mark = "passed" if verdict.status == "passed" else "failed"
    notes = []
    if verdict.advisory:
        notes.append("advisory")
    if not verdict.applicable:
        notes.append("not applicable")
    note = f" [{', '.join(notes)}]" if notes else ""
    lines = [
        f"{paint(*_SIGNS[head])} {paint(verdict.check, _BOLD)}: {verdict.status}{note} — "
        f"{printable(plain(verdict.reason))}"
    ]
    for row in explanation(verdict).rows:
        pad = "  " * (row.depth + 1)
        lines.append(f"{pad}{paint(*_SIGNS[row.mark])} {printable(plain(row.text))}")
        if row.fix:
            lines.append(f"{pad}    {paint('fix: ' + plain(row.fix), _DIM)}")
    if verdict.wake_at is not None:
        lines.append(f"  {paint('re-evaluates at ' + verdict.wake_at.isoformat(), _DIM)}")
    return "\n".join(lines)

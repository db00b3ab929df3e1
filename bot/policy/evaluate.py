"""Policy + facts -> Verdict, and the human rendering of a verdict's outcome tree."""

from __future__ import annotations

from collections.abc import Sequence

from bot.logs import get_logger
from bot.policy.combinators import earliest
from bot.policy.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.policy.model import MissingFactError, Outcome, Policy, Status, Verdict, judge_rule
from bot.terminal import printable

log = get_logger(__name__)


def leaf_text(outcome: Outcome) -> str:
    """A failing leaf for a one-line reason; a `name:` label leads when it was given."""
    if outcome.evidence.startswith(outcome.rule + ":"):
        return outcome.evidence
    return f"{outcome.rule} — {outcome.evidence}"


def _rules(count: int) -> str:
    return "1 rule" if count == 1 else f"{count} rules"


def evaluate(policy: Policy, facts: MergeRequestFacts) -> Verdict:
    """Judge one MR. Raises MissingFactError when a needed fact was not fetched.

    A scope rule that cannot be decided (e.g. `changed_files` on a diff GitLab cut) counts as
    applying: judging an MR that might be out of scope is the safe side of not knowing.
    """
    advisory = policy.mode == "advisory"
    for rule in policy.applies_to:
        scope = judge_rule(rule, facts)
        if not scope.passed and not scope.unknown:
            reason = f"not applicable: {scope.evidence}"
            root = Outcome(policy.check, True, reason, children=(scope,))
            return Verdict(
                policy.check, "passed", reason, applicable=False, advisory=advisory, outcome=root
            )
    children = tuple(judge_rule(rule, facts) for rule in policy.rules)
    wake_at = earliest(children)
    failing = [child for child in children if not child.passed]
    if failing:
        reason = "; ".join(leaf_text(leaf) for child in failing for leaf in child.failing_leaves())
        fixes = [child.fix for child in failing if child.fix]
        undecided = all(child.unknown for child in failing)
        verb = "cannot be decided" if undecided else "fail"
        root = Outcome(
            policy.check,
            False,
            f"{len(failing)} of {_rules(len(children))} {verb}",
            children=children,
            fix="; ".join(fixes) or None,
            wake_at=wake_at,
            unknown=undecided,
        )
    else:
        every = "all 1 rule holds" if len(children) == 1 else f"all {len(children)} rules hold"
        reason = every
        root = Outcome(policy.check, True, every, children=children, wake_at=wake_at)
    status: Status = "failed" if failing and not advisory else "passed"
    if advisory:
        reason = f"advisory: would fail: {reason}" if failing else f"advisory: {reason}"
    return Verdict(
        policy.check,
        status,
        reason,
        advisory=advisory,
        outcome=root,
        wake_at=root.wake_at,
    )


def applies(policy: Policy, facts: MergeRequestFacts, *, unknown: bool = True) -> bool:
    """Whether `policy` applies, judging only scope rules that need no optional fact.

    Rules that need optional facts (e.g. `changed_files`) count as `unknown`.
    """
    for rule in policy.applies_to:
        if rule.needs:
            if not unknown:
                return False
            continue
        if not rule.evaluate(facts).passed:
            return False
    return True


def judge(policy: Policy, facts: MergeRequestFacts) -> Verdict:
    """`evaluate`, guarded: a fact GitLab refused to give makes only the rules that are judged
    and need it undecided (so a policy whose `applies_to` excludes the MR never fails for a
    group it names), and a fetching bug fails the check with what went wrong instead of
    leaving it pending."""
    try:
        return evaluate(policy, facts)
    except MissingFactError as exc:
        log.error("missing_fact", check=policy.check, error=str(exc))
        return _cannot_judge(policy, f"cannot judge: {exc}")


def _cannot_judge(policy: Policy, reason: str) -> Verdict:
    advisory = policy.mode == "advisory"
    fix = "report this to the bot's operators: it is a bug in the bot"
    outcome = Outcome(policy.check, False, reason, fix=fix)
    return Verdict(
        policy.check,
        "passed" if advisory else "failed",
        f"advisory: would fail: {reason}" if advisory else reason,
        advisory=advisory,
        outcome=outcome,
    )


def needs_of(policies: Sequence[Policy]) -> FactNeeds:
    needs = NO_NEEDS
    for policy in policies:
        needs = needs | policy.needs
    return needs


def _own_fix(outcome: Outcome) -> bool:
    """Show a fix where it says something new: at leaves, and where alternatives are joined."""
    child_fixes = [child.fix for child in outcome.children if not child.passed and child.fix]
    return not child_fixes or outcome.fix != "; ".join(child_fixes)


_GREEN, _RED, _DIM, _BOLD, _RESET = "\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m"


def render_verdict(verdict: Verdict, color: bool = False) -> str:
    """The verdict as an indented tree: ✓/✗ per rule, its evidence, and the fix where failing.

    Evidence quotes MR titles, paths and labels: every piece is made printable (bot/terminal.py)
    before it is coloured, so only the bot's own colour codes reach a terminal."""

    def paint(text: str, code: str) -> str:
        return f"{code}{printable(text)}{_RESET}" if color else printable(text)

    passed = verdict.status == "passed"
    mark = paint("✓", _GREEN) if passed else paint("✗", _RED)
    notes = []
    if verdict.advisory:
        notes.append("advisory")
    if not verdict.applicable:
        notes.append("not applicable")
    note = f" [{', '.join(notes)}]" if notes else ""
    lines = [
        f"{mark} {paint(verdict.check, _BOLD)}: {verdict.status}{note} — "
        f"{printable(verdict.reason)}"
    ]

    def walk(outcome: Outcome, depth: int, blamed: bool) -> None:
        # `blamed`: every ancestor fails, so a fix here helps (not under a holding `any`/`not`).
        pad = "  " * depth
        sign = (
            paint("✓", _GREEN)
            if outcome.passed
            else paint("?", _RED)
            if outcome.unknown
            else paint("✗", _RED)
        )
        lines.append(f"{pad}{sign} {printable(leaf_text(outcome))}")
        if blamed and outcome.fix and not outcome.passed and _own_fix(outcome):
            lines.append(f"{pad}    {paint('fix: ' + outcome.fix, _DIM)}")
        for child in outcome.children:
            walk(child, depth + 1, blamed and not outcome.passed)

    if verdict.outcome is not None:
        # A root that holds (passed, or not applicable) has nothing to fix.
        for child in verdict.outcome.children:
            walk(child, 1, not verdict.outcome.passed)
    if verdict.wake_at is not None:
        lines.append(f"  {paint('re-evaluates at ' + verdict.wake_at.isoformat(), _DIM)}")
    return "\n".join(lines)

"""Policy + facts -> Verdict (bot/policy/explanation.py turns a verdict into what is shown)."""

from __future__ import annotations

from collections.abc import Sequence

from bot.logs import get_logger
from bot.policy.combinators import earliest
from bot.policy.explanation import leaf_text
from bot.policy.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.policy.model import MissingFactError, Outcome, Policy, Status, Verdict, judge_rule
from bot.policy.predicates.base import rules_failing, rules_holding

log = get_logger(__name__)


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
            rules_failing(len(failing), len(children), verb),
            children=children,
            fix="; ".join(fixes) or None,
            wake_at=wake_at,
            unknown=undecided,
        )
    else:
        every = rules_holding(len(children))
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

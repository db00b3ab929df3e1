"""`all`, `any` and `not`: rules made of rules, nested freely.

Combinators evaluate every child (no short-circuit) so an explanation always shows the whole tree;
their `wake_at` is the earliest of their children's, so the verdict knows when to look again.

A child may be undecided (`Outcome.unknown`: GitLab's answer was cut, not settled, or refused).
Combinators follow three-valued logic so that doubt never becomes a pass: `all` fails for sure
when some child fails for sure, else it is undecided while some child is; `any` holds when some
child holds, else it is undecided while some child is; `not` of an undecided rule is undecided.
"""

from __future__ import annotations

import datetime as dt

from yaml.nodes import Node

from bot.policy.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome, Rule, judge_rule
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import (
    Predicate,
    compile_rule_item,
    plural,
    register,
    rules_failing,
    rules_holding,
)


def earliest(outcomes: tuple[Outcome, ...]) -> dt.datetime | None:
    """The earliest `wake_at` among outcomes (None when none has one)."""
    times = [outcome.wake_at for outcome in outcomes if outcome.wake_at is not None]
    return min(times) if times else None


def combined_needs(rules: tuple[Rule, ...]) -> FactNeeds:
    needs = NO_NEEDS
    for rule in rules:
        needs = needs | rule.needs
    return needs


def label(outcome: Outcome) -> str:
    return f"`{outcome.rule}`"


class _Group(Predicate):
    """Shared compile for `all: [...]` and `any: [...]`."""

    __slots__ = ("rules",)

    def __init__(self, name: str | None, line: int, rules: tuple[Rule, ...]) -> None:
        super().__init__(name, line, combined_needs(rules))
        self.rules = rules

    def subrules(self) -> tuple[Rule, ...]:
        return self.rules

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        items = ctx.sequence(node, f"`{cls.key}`")
        if items is None:
            return None
        rules = [compile_rule_item(ctx, item, f"an item of `{cls.key}`") for item in items]
        if any(rule is None for rule in rules):
            return None
        return cls(name, line, tuple(rule for rule in rules if rule is not None))


@register
class All(_Group):
    """`all: [rule...]` — every rule holds (like `require` itself, for use inside `any`/`not`)."""

    key = "all"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        children = tuple(judge_rule(rule, facts) for rule in self.rules)
        failing = [child for child in children if not child.passed]
        wake_at = earliest(children)
        if failing:
            fixes = [child.fix for child in failing if child.fix]
            names = ", ".join(label(child) for child in failing)
            undecided = all(child.unknown for child in failing)
            verb = "cannot be decided" if undecided else "fail"
            return self.outcome(
                False,
                f"{rules_failing(len(failing), len(children), verb)} ({names})",
                fix="; ".join(fixes) or None,
                children=children,
                wake_at=wake_at,
                unknown=undecided,
            )
        undo = [child.negated_fix for child in children if child.negated_fix]
        return self.outcome(
            True,
            rules_holding(len(children)),
            negated_fix=" or ".join(undo) or None,
            children=children,
            wake_at=wake_at,
        )


@register
class Any(_Group):
    """`any: [rule...]` — at least one rule holds."""

    key = "any"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        children = tuple(judge_rule(rule, facts) for rule in self.rules)
        holding = [child for child in children if child.passed]
        wake_at = earliest(children)
        if holding:
            undo = [child.negated_fix for child in holding if child.negated_fix]
            return self.outcome(
                True,
                f"holds by {', '.join(label(child) for child in holding)}",
                negated_fix=" and ".join(undo) or None,
                children=children,
                wake_at=wake_at,
            )
        fixes = [child.fix for child in children if child.fix]
        undecided = [child for child in children if child.unknown]
        detail = (
            "the only rule does not hold"
            if len(children) == 1
            else f"none of {plural(len(children), 'rule')} holds"
        )
        if undecided:
            detail += f"; {', '.join(label(child) for child in undecided)} cannot be decided"
        return self.outcome(
            False,
            detail,
            fix=" or ".join(fixes) or None,
            children=children,
            wake_at=wake_at,
            unknown=bool(undecided),
        )


@register
class Not(Predicate):
    """`not: {rule}` — the rule does not hold."""

    key = "not"
    __slots__ = ("rule",)

    def __init__(self, name: str | None, line: int, rule: Rule) -> None:
        super().__init__(name, line, rule.needs)
        self.rule = rule

    def subrules(self) -> tuple[Rule, ...]:
        return (self.rule,)

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        rule = compile_rule_item(ctx, node, "`not`")
        return None if rule is None else cls(name, line, rule)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        child = judge_rule(self.rule, facts)
        if child.unknown:
            return self.outcome(
                False,
                f"cannot tell whether {label(child)} holds ({child.evidence})",
                fix=child.fix,
                children=(child,),
                wake_at=child.wake_at,
                unknown=True,
            )
        if child.passed:
            return self.outcome(
                False,
                f"{label(child)} must not hold, but it does ({child.evidence})",
                fix=child.negated_fix or f"change the MR so that {label(child)} no longer holds",
                children=(child,),
                wake_at=child.wake_at,
            )
        return self.outcome(
            True,
            f"{label(child)} does not hold ({child.evidence})",
            negated_fix=child.fix,
            children=(child,),
            wake_at=child.wake_at,
        )

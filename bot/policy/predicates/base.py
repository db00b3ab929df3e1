"""The predicate registry: each predicate or combinator is one class registered under its key.

Adding a predicate is adding one class with `key`, `compile` (validate the YAML arguments once, at
load time) and `evaluate` (judge facts, fast: no parsing or compiling here).
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from yaml.nodes import Node

from bot.policy.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome, Rule
from bot.policy.nodes import Ctx, describe, suggest

REGISTRY: dict[str, type[Predicate]] = {}


def register(cls: type[Predicate]) -> type[Predicate]:
    """Class decorator: make `cls.key` usable in `require` lists."""
    if cls.key in REGISTRY:
        raise ValueError(f"predicate `{cls.key}` is registered twice")
    REGISTRY[cls.key] = cls
    return cls


class Predicate:
    """Base of every compiled rule. Subclasses set `key`, implement `compile` and `evaluate`."""

    key: ClassVar[str] = ""
    # Evidence reads `<prefix><detail>`; None means `<key>: `.
    prefix: ClassVar[str | None] = None
    __slots__ = ("line", "name", "needs")

    def __init__(self, name: str | None, line: int, needs: FactNeeds = NO_NEEDS) -> None:
        self.name = name or self.key
        self.line = line
        self.needs = needs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        """Validate the predicate's YAML value and build the rule (None after reporting)."""
        raise NotImplementedError

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        raise NotImplementedError

    def subrules(self) -> tuple[Rule, ...]:
        """The rules inside this one (combinators), for tools that walk a policy."""
        return ()

    def outcome(
        self,
        passed: bool,
        detail: str,
        *,
        fix: str | None = None,
        negated_fix: str | None = None,
        wake_at: dt.datetime | None = None,
        children: tuple[Outcome, ...] = (),
        unknown: bool = False,
    ) -> Outcome:
        """An outcome whose evidence reads `key: detail`; `fix` only when failing. `unknown`
        (never with `passed`): GitLab's answer cannot decide the rule."""
        return Outcome(
            rule=self.name,
            passed=passed and not unknown,
            evidence=f"{self.key}: {detail}" if self.prefix is None else self.prefix + detail,
            children=children,
            fix=None if passed and not unknown else fix,
            negated_fix=negated_fix if passed and not unknown else None,
            wake_at=wake_at,
            unknown=unknown,
        )

    def undecided(
        self, detail: str, *, fix: str | None = None, wake_at: dt.datetime | None = None
    ) -> Outcome:
        """The rule cannot be decided from what GitLab showed: fails closed, says why."""
        return self.outcome(False, detail, fix=fix, wake_at=wake_at, unknown=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} line {self.line}>"


def rule_names(rules: tuple[Rule, ...]) -> list[str]:
    """Every rule name in a rule tree, outermost first (to check test expectations)."""
    names: list[str] = []
    for rule in rules:
        names.append(rule.name)
        subrules = getattr(rule, "subrules", None)
        if subrules is not None:
            names += rule_names(subrules())
    return names


def compile_rule_item(ctx: Ctx, node: Node, what: str = "a rule") -> Rule | None:
    """One item of `require` (or of `all`/`any`/`not`): one predicate key plus optional `name`."""
    entries = ctx.mapping(node, what)
    if entries is None:
        return None
    name: str | None = None
    if "name" in entries:
        name = ctx.string(entries["name"].node, "`name`")
    keys = [entry for entry in entries.values() if entry.key != "name"]
    unknown = [entry for entry in keys if entry.key not in REGISTRY]
    for entry in unknown:
        ctx.error(
            entry.key_node,
            f"unknown predicate `{entry.key}`{suggest(entry.key, [*REGISTRY, 'name'])}",
        )
    if unknown:
        return None
    if not keys:
        ctx.error(node, f"{what} needs one predicate or combinator (e.g. `labels:`), got none")
        return None
    if len(keys) > 1:
        listed = ", ".join(f"`{entry.key}`" for entry in keys)
        ctx.error(
            keys[1].key_node,
            f"{what} has one predicate each, got {listed}: put them in separate list items "
            "(every item of `require` must hold) or under `all:`",
        )
        return None
    entry = keys[0]
    return REGISTRY[entry.key].compile(ctx, entry.node, name, entry.line)


def expect_true(ctx: Ctx, node: Node, key: str) -> bool:
    """For switch-like predicates (`no_conflicts: true`): only `true` means something."""
    value = ctx.boolean(node, f"`{key}`")
    if value is False:
        ctx.error(node, f"`{key}: false` checks nothing; remove the rule instead")
        return False
    return value is True


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural_word or word + 's')}"


def rules_failing(failing: int, count: int, verb: str = "fail") -> str:
    """`2 of 3 rules fail`; of a single rule, `the only rule fails`."""
    if count == 1:
        return f"the only rule {'fails' if verb == 'fail' else verb}"
    return f"{failing} of {count} rules {verb}"


def rules_holding(count: int) -> str:
    """`all 3 rules hold`; of a single rule, `the only rule holds` (never "all 1 rule")."""
    return "the only rule holds" if count == 1 else f"all {count} rules hold"


def clip(text: str, limit: int = 60) -> str:
    """A short quoted excerpt of user text for evidence sentences."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f'"{text}"'


def listing(items: list[str], limit: int = 3) -> str:
    """`a, b, c and 4 more` — keeps evidence to one readable sentence."""
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


__all__ = [
    "REGISTRY",
    "Predicate",
    "clip",
    "compile_rule_item",
    "describe",
    "expect_true",
    "listing",
    "plural",
    "register",
    "rules_failing",
    "rules_holding",
]

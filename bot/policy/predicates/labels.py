"""`labels: {all, any, none}`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, register


def _labels(names: list[str]) -> str:
    return ("label " if len(names) == 1 else "labels ") + ", ".join(names)


@register
class Labels(Predicate):
    """`labels: {all, any, none}` — label sets as named (exact, case-sensitive names)."""

    key = "labels"
    __slots__ = ("all", "any", "none")

    def __init__(
        self,
        name: str | None,
        line: int,
        all_: tuple[str, ...],
        any_: tuple[str, ...],
        none: tuple[str, ...],
    ) -> None:
        super().__init__(name, line)
        self.all, self.any, self.none = all_, any_, none

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        entries = ctx.mapping(node, "`labels`")
        if entries is not None and not entries:
            ctx.error(node, "`labels` needs `all`, `any` or `none`")
            return None
        entries = ctx.known(entries, ("all", "any", "none"), "`labels`")
        if entries is None:
            return None
        sets: dict[str, tuple[str, ...]] = {}
        for key in ("all", "any", "none"):
            if key in entries:
                items = ctx.string_list(entries[key].node, f"`labels.{key}`", single_ok=True)
                if items is None:
                    return None
                sets[key] = tuple(dict.fromkeys(value for value, _ in items))
        return cls(name, line, sets.get("all", ()), sets.get("any", ()), sets.get("none", ()))

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        present = facts.labels
        held: list[str] = []
        failed: list[str] = []
        fixes: list[str] = []
        undo: list[str] = []
        if self.all:
            missing = [label for label in self.all if label not in present]
            if missing:
                failed.append(f"missing {_labels(missing)}")
                fixes.append(f"add {_labels(missing)}")
            else:
                held.append(f"has {_labels(list(self.all))}")
                undo.append(f"remove {_labels([self.all[0]])}")
        if self.any:
            found = [label for label in self.any if label in present]
            if found:
                held.append(f"has {_labels(found)}")
                undo.append(f"remove {_labels(found)}")
            else:
                one_of = "one of " if len(self.any) > 1 else ""
                failed.append(f"has none of {', '.join(self.any)}")
                fixes.append(f"add {one_of}{_labels(list(self.any))}")
        if self.none:
            forbidden = [label for label in self.none if label in present]
            if forbidden:
                failed.append(f"has {_labels(forbidden)}, which must not be set")
                fixes.append(f"remove {_labels(forbidden)}")
            else:
                held.append(f"has none of {', '.join(self.none)}")
                undo.append(f"add {_labels([self.none[0]])}")
        if failed:
            return self.outcome(False, "; ".join(failed), fix=" and ".join(fixes))
        return self.outcome(True, "; ".join(held), negated_fix=" or ".join(undo))

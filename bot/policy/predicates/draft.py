"""`draft: false` / `true`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, register


@register
class Draft(Predicate):
    """`draft: false` / `true` — the MR's draft state is as given."""

    key = "draft"
    __slots__ = ("want",)

    def __init__(self, name: str | None, line: int, want: bool) -> None:
        super().__init__(name, line)
        self.want = want

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        want = ctx.boolean(node, "`draft`")
        return None if want is None else cls(name, line, want)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        state = "the MR is a draft" if facts.draft else "the MR is not a draft"
        to_draft, to_ready = "mark the MR as draft", "mark the MR as ready"
        if facts.draft == self.want:
            return self.outcome(True, state, negated_fix=to_ready if facts.draft else to_draft)
        return self.outcome(False, state, fix=to_draft if self.want else to_ready)

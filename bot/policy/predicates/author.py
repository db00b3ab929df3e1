"""`author: {users, groups, inherited}`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, register
from bot.policy.predicates.people import People, compile_people


@register
class Author(Predicate):
    """`author: {users, groups}` — the MR's author is one of them."""

    key = "author"
    __slots__ = ("people", "who")

    def __init__(self, name: str | None, line: int, people: People) -> None:
        super().__init__(name, line, people.needs)
        self.people = people
        self.who = people.phrase()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        people = compile_people(ctx, node, "`author`")
        return None if people is None else cls(name, line, people)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        author = facts.author.username
        membership = self.people.judge(self, facts, author.lower())
        if membership.counted:
            why = membership.why
            detail = f"{author} is {'one of ' + self.who if why == 'listed' else why}"
            return self.outcome(True, detail, negated_fix=f"have someone other than {self.who}")
        fix = f"have the change authored by {self.who}"
        if membership.unknown:
            return self.undecided(f"{author}: {membership.why}", fix=fix)
        return self.outcome(False, f"{author} {membership.why}", fix=fix)

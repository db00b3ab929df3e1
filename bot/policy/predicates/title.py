"""`title` and `description`: regexes on the MR's text."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.patterns import (
    Regex,
    compile_regex,
)
from bot.policy.predicates.base import Predicate, clip, register


@register
class Title(Predicate):
    """`title: regex` — the MR title matches (RE2 search; anchor with ^ yourself)."""

    key = "title"
    __slots__ = ("regex",)

    def __init__(self, name: str | None, line: int, regex: Regex) -> None:
        super().__init__(name, line)
        self.regex = regex

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        regex = compile_regex(ctx, node, f"`{cls.key}`")
        return None if regex is None else cls(name, line, regex)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        title = facts.title
        if self.regex.search(title):
            return self.outcome(
                True,
                f"{clip(title)} matches {self.regex}",
                negated_fix=f"change the title so it does not match {self.regex}",
            )
        return self.outcome(
            False,
            f"{clip(title)} does not match {self.regex}",
            fix=f"change the title to match {self.regex}",
        )


@register
class Description(Title):
    """`description: regex` — the MR description matches."""

    key = "description"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        text = facts.description
        seen = f"the description {clip(text, 40)}" if text.strip() else "the empty description"
        if self.regex.search(text):
            return self.outcome(
                True,
                f"{seen} matches {self.regex}",
                negated_fix=f"change the description so it does not match {self.regex}",
            )
        return self.outcome(
            False,
            f"{seen} does not match {self.regex}",
            fix=f"change the description to match {self.regex}",
        )

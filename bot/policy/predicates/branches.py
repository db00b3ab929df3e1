"""`target_branch` and `source_branch`: globs on the branch names."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.patterns import (
    NameGlobs,
    compile_name_globs,
)
from bot.policy.predicates.base import Predicate, register


@register
class TargetBranch(Predicate):
    """`target_branch: glob | [glob...]` — GitLab-style wildcards (`*` also matches `/`)."""

    key = "target_branch"
    side = "target"
    __slots__ = ("globs",)

    def __init__(self, name: str | None, line: int, globs: NameGlobs) -> None:
        super().__init__(name, line)
        self.globs = globs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        globs = compile_name_globs(ctx, node, f"`{cls.key}`")
        return None if globs is None else cls(name, line, globs)

    def branch(self, facts: MergeRequestFacts) -> str:
        return facts.target_branch

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        branch = self.branch(facts)
        if self.globs.matches(branch):
            return self.outcome(
                True,
                f"{branch} matches {self.globs}",
                negated_fix=f"use a {self.side} branch other than {self.globs}",
            )
        return self.outcome(
            False,
            f"{branch} is not one of {self.globs}",
            fix=f"use a {self.side} branch matching {self.globs}",
        )


@register
class SourceBranch(TargetBranch):
    """`source_branch: glob | [glob...]`."""

    key = "source_branch"
    side = "source"
    __slots__ = ()

    def branch(self, facts: MergeRequestFacts) -> str:
        return facts.source_branch

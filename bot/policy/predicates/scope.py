"""`applies_to`: which MRs a policy judges at all. Outside it the verdict is "not applicable".

These rules are not usable in `require` (they are not registered); their evidence reads as the
tail of "not applicable: target branch dev is not one of main, release/*".
"""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome, Rule
from bot.policy.nodes import Ctx
from bot.policy.patterns import NameGlobs, compile_name_globs
from bot.policy.predicates.base import Predicate
from bot.policy.predicates.branches import SourceBranch, TargetBranch
from bot.policy.predicates.changed_files import ChangedFiles

KEYS = ("projects", "target_branches", "source_branches", "changed_files")


class Projects(Predicate):
    """`projects: [glob...]` on path_with_namespace (case-insensitive, `*` spans `/`)."""

    key = "projects"
    prefix = "project "
    __slots__ = ("globs",)

    def __init__(self, name: str | None, line: int, globs: NameGlobs) -> None:
        super().__init__(name, line)
        self.globs = globs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        globs = compile_name_globs(ctx, node, "`applies_to.projects`", ignore_case=True)
        return None if globs is None else cls(name, line, globs)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        project = facts.project_path or str(facts.project_id)
        if self.globs.matches(project):
            return self.outcome(True, f"{project} matches {self.globs}")
        return self.outcome(False, f"{project} is not one of {self.globs}")


class TargetBranches(TargetBranch):
    key = "target_branches"
    prefix = "target branch "
    __slots__ = ()


class SourceBranches(SourceBranch):
    key = "source_branches"
    prefix = "source branch "
    __slots__ = ()


class AppliesChangedFiles(ChangedFiles):
    """An undecided scope (GitLab listed part of the diff) counts as applying (policy/evaluate)."""

    key = "changed_files"
    prefix = ""
    __slots__ = ()


_CLASSES: dict[str, type[Predicate]] = {
    "projects": Projects,
    "target_branches": TargetBranches,
    "source_branches": SourceBranches,
    "changed_files": AppliesChangedFiles,
}


def compile_applies_to(ctx: Ctx, node: Node) -> tuple[Rule, ...] | None:
    """The `applies_to` mapping -> rules that must all hold for the policy to apply."""
    entries = ctx.known(ctx.mapping(node, "`applies_to`"), KEYS, "`applies_to`")
    if entries is None:
        return None
    rules = []
    for key in KEYS:  # cheap checks first: branches before diffs
        if key in entries:
            entry = entries[key]
            rule = _CLASSES[key].compile(ctx, entry.node, None, entry.line)
            if rule is None:
                return None
            rules.append(rule)
    return tuple(rules)

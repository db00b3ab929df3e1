"""`changed_files` and `only_changed_files`: globs on the paths the change touches."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.patterns import (
    PathGlobs,
    compile_path_globs,
)
from bot.policy.predicates.base import Predicate, listing, plural, register
from bot.policy.predicates.common import (
    SPLIT_FIX,
    changed_files,
    changed_paths,
    listed,
)


@register
class ChangedFiles(Predicate):
    """`changed_files: [glob...]` — some changed path matches (gitignore-style globs)."""

    key = "changed_files"
    __slots__ = ("globs",)

    def __init__(self, name: str | None, line: int, globs: PathGlobs) -> None:
        super().__init__(name, line, FactNeeds(diffs=True))
        self.globs = globs

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        globs = compile_path_globs(ctx, node, f"`{cls.key}`")
        return None if globs is None else cls(name, line, globs)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        files = changed_files(self, facts)
        matches = self.globs.matches
        total = 0
        for path in changed_paths(files):
            total += 1
            if matches(path):
                return self.outcome(
                    True,
                    f"{path} matches {self.globs}",
                    negated_fix=f"change no files matching {self.globs}",
                )
        if not facts.paths_complete:
            # The files GitLab did not list may match: a lower bound is no proof of absence.
            return self.undecided(
                f"no path GitLab listed matches {self.globs}, but {listed(facts)}",
                fix=SPLIT_FIX,
            )
        if not total:
            detail = "the MR changes no files"
        else:
            detail = f"no changed path matches {self.globs} ({plural(total, 'path')} checked)"
        return self.outcome(False, detail, fix=f"change a file matching {self.globs}")


@register
class OnlyChangedFiles(ChangedFiles):
    """`only_changed_files: [glob...]` — every changed path matches (an empty diff passes)."""

    key = "only_changed_files"
    __slots__ = ()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        files = changed_files(self, facts)
        matches = self.globs.matches
        total = 0
        outside: list[str] = []
        for path in changed_paths(files):
            total += 1
            if not matches(path):
                outside.append(path)
        if not outside and not facts.paths_complete:
            return self.undecided(
                f"the {plural(total, 'path')} GitLab listed match {self.globs}, but "
                f"{listed(facts)}",
                fix=SPLIT_FIX,
            )
        if not total:
            return self.outcome(
                True,
                f"the MR changes no files, so none is outside {self.globs}",
                negated_fix=f"change a file outside {self.globs}",
            )
        if not outside:
            return self.outcome(
                True,
                f"all {plural(total, 'changed path')} match {self.globs}",
                negated_fix=f"change a file outside {self.globs}",
            )
        return self.outcome(
            False,
            f"{len(outside)} of {plural(total, 'changed path')} "
            f"{'is' if len(outside) == 1 else 'are'} outside {self.globs}: {listing(outside)}",
            fix=f"limit the change to files matching {self.globs}",
        )

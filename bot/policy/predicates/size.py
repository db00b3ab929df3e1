"""`changed_lines` and `changed_files_count`: bounds on the size of the change."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import ChangedFile, FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, plural, register
from bot.policy.predicates.common import (
    SPLIT_FIX,
    changed_files,
    listed,
)


class _Bounds(Predicate):
    """Shared `{max, min}` handling for size predicates."""

    unit = ""
    __slots__ = ("max", "min")

    def __init__(self, name: str | None, line: int, low: int | None, high: int | None) -> None:
        super().__init__(name, line, FactNeeds(diffs=True, line_counts=True))
        self.min, self.max = low, high

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        what = f"`{cls.key}`"
        entries = ctx.mapping(node, what)
        if entries is not None and not entries:
            ctx.error(node, f"{what} needs `max`, `min` or both")
            return None
        entries = ctx.known(entries, ("max", "min"), what)
        if entries is None:
            return None
        bounds: dict[str, int | None] = {"min": None, "max": None}
        for key in ("min", "max"):
            if key in entries:
                value = ctx.integer(entries[key].node, f"`{cls.key}.{key}`", minimum=0)
                if value is None:
                    return None
                bounds[key] = value
        low, high = bounds["min"], bounds["max"]
        if low is not None and high is not None and low > high:
            ctx.error(entries["min"].node, f"{what}: `min` ({low}) is greater than `max` ({high})")
            return None
        return cls(name, line, low, high)

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        raise NotImplementedError

    def exact(self, facts: MergeRequestFacts) -> bool:
        """Whether `measure` is the true value, not a lower bound."""
        raise NotImplementedError

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        value = self.measure(changed_files(self, facts))
        exact = self.exact(facts)
        shown = str(value) if exact else f"at least {value}"
        shrink = (
            f"reduce the change to at most {plural(self.max, self.unit)}"
            if self.max is not None
            else None
        )
        # A lower bound can prove `> max` and `>= min`, never `<= max` or `< min`.
        if self.max is not None and value > self.max:
            return self.outcome(False, f"{shown} > max {self.max}", fix=shrink)
        if not exact and (self.max is not None or (self.min is not None and value < self.min)):
            return self.undecided(
                f"{shown}, so {self.bounds()} cannot be confirmed: {self.doubt(facts)}",
                fix=shrink or SPLIT_FIX,
            )
        if self.min is not None and value < self.min:
            return self.outcome(
                False,
                f"{value} < min {self.min}",
                fix=f"grow the change to at least {plural(self.min, self.unit)}",
            )
        if self.min is not None and self.max is not None:
            held = f"{value} within min {self.min}, max {self.max}"
        elif self.max is not None:
            held = f"{value} <= max {self.max}"
        else:
            held = f"{shown} >= min {self.min}"
        undo = (
            f"grow the change beyond {plural(self.max, self.unit)}"
            if self.max is not None
            else f"shrink the change below {plural(self.min or 0, self.unit)}"
        )
        return self.outcome(True, held, negated_fix=undo)

    def bounds(self) -> str:
        parts = [f"min {self.min}"] if self.min is not None else []
        parts += [f"max {self.max}"] if self.max is not None else []
        return ", ".join(parts)

    def doubt(self, facts: MergeRequestFacts) -> str:
        return listed(facts)


@register
class ChangedLines(_Bounds):
    """`changed_lines: {max, min}` — additions + deletions over the whole diff."""

    key = "changed_lines"
    unit = "line"
    __slots__ = ()

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        return sum(changed.additions + changed.deletions for changed in files)

    def exact(self, facts: MergeRequestFacts) -> bool:
        return facts.line_counts_exact

    def doubt(self, facts: MergeRequestFacts) -> str:
        if not facts.file_count_exact:
            return listed(facts)
        return "GitLab did not show the lines of every file (it collapses big diffs)"


@register
class ChangedFilesCount(_Bounds):
    """`changed_files_count: {max, min}` — diff entries (a rename is one file)."""

    key = "changed_files_count"
    unit = "file"
    __slots__ = ()

    def measure(self, files: tuple[ChangedFile, ...]) -> int:
        return len(files)

    def exact(self, facts: MergeRequestFacts) -> bool:
        return facts.file_count_exact

"""`commits: {message, signed_off}`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import Commit, FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.patterns import (
    Regex,
    compile_regex,
)
from bot.policy.predicates.base import Predicate, clip, expect_true, listing, plural, register
from bot.policy.predicates.common import (
    optional_fact,
)

_SIGNED_OFF = Regex(r"(?mi)^signed-off-by:[ \t]*\S")


@register
class Commits(Predicate):
    """`commits: {message: regex, signed_off: true}` — every commit complies."""

    key = "commits"
    __slots__ = ("message", "signed_off")

    def __init__(self, name: str | None, line: int, message: Regex | None, signed: bool) -> None:
        super().__init__(name, line, FactNeeds(commits=True))
        self.message, self.signed_off = message, signed

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        entries = ctx.mapping(node, "`commits`")
        if entries is not None and not entries:
            ctx.error(node, "`commits` needs `message`, `signed_off` or both")
            return None
        entries = ctx.known(entries, ("message", "signed_off"), "`commits`")
        if entries is None:
            return None
        message = signed = None
        ok = True
        if "message" in entries:
            message = compile_regex(ctx, entries["message"].node, "`commits.message`")
            ok = message is not None
        if "signed_off" in entries:
            signed = expect_true(ctx, entries["signed_off"].node, "commits.signed_off")
            ok = ok and signed
        return cls(name, line, message, bool(signed)) if ok else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        commits = optional_fact(self, facts, facts.commits, "commits", "commits")
        total = len(commits)
        if not total:
            return self.outcome(True, "the MR has no commits", negated_fix="push a commit")
        bad_message: list[Commit] = []
        unsigned: list[Commit] = []
        if self.message is not None:
            search = self.message.search
            bad_message = [c for c in commits if not search(c.message)]
        if self.signed_off:
            unsigned = [c for c in commits if not _SIGNED_OFF.search(c.message)]
        problems: list[str] = []
        fixes: list[str] = []
        if bad_message:
            shown = listing(
                [f"{c.sha[:8]} {clip(c.message.partition(chr(10))[0], 40)}" for c in bad_message]
            )
            problems.append(
                f"{len(bad_message)} of {plural(total, 'commit')} "
                f"{'does' if len(bad_message) == 1 else 'do'} not match {self.message}: {shown}"
            )
            fixes.append(f"reword commits to match {self.message}")
        if unsigned:
            shown = listing([c.sha[:8] for c in unsigned])
            problems.append(
                f"{len(unsigned)} of {plural(total, 'commit')} "
                f"{'lacks' if len(unsigned) == 1 else 'lack'} a Signed-off-by line: {shown}"
            )
            fixes.append("sign off every commit (git commit -s)")
        if problems:
            return self.outcome(False, "; ".join(problems), fix=" and ".join(fixes))
        one = total == 1
        held = [f"{'matches' if one else 'match'} {self.message}"] if self.message else []
        held += [f"{'is' if one else 'are'} signed off"] if self.signed_off else []
        every = "the only commit" if one else f"all {total} commits"
        return self.outcome(
            True, f"{every} {' and '.join(held)}", negated_fix="push a commit that does not comply"
        )

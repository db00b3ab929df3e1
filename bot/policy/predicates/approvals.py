"""`approvals: {count, from, exclude_author}`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, listing, plural, register
from bot.policy.predicates.common import (
    optional_fact,
)
from bot.policy.predicates.people import People, compile_people


@register
class Approvals(Predicate):
    """`approvals: {count, from: {users, groups, inherited}, exclude_author}` — enough eligible
    approvals. An approval GitLab may still delete (given before a push, in a project that
    resets approvals on push, while GitLab has not settled them) does not count yet."""

    key = "approvals"
    __slots__ = ("count", "exclude_author", "people", "source")

    def __init__(
        self, name: str | None, line: int, count: int, people: People, exclude_author: bool
    ) -> None:
        super().__init__(name, line, FactNeeds(approvals=True) | people.needs)
        self.count, self.people = count, people
        self.exclude_author = exclude_author
        who = people.phrase()
        self.source = f" from {who}" if who else ""

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        keys = ("count", "from", "exclude_author")
        entries = ctx.known(ctx.mapping(node, "`approvals`"), keys, "`approvals`")
        if entries is None:
            return None
        count: int | None = 1
        if "count" in entries:
            count = ctx.integer(entries["count"].node, "`approvals.count`", minimum=1)
        people: People | None = People()
        if "from" in entries:
            people = compile_people(ctx, entries["from"].node, "`approvals.from`")
        exclude: bool | None = True
        if "exclude_author" in entries:
            exclude = ctx.boolean(entries["exclude_author"].node, "`approvals.exclude_author`")
        if count is None or people is None or exclude is None:
            return None
        return cls(name, line, count, people, exclude)

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        approved_by = optional_fact(self, facts, facts.approved_by, "approvals", "approvals")
        author = facts.author.username.lower()
        counted: list[str] = []
        unsettled: list[str] = []  # would count, but GitLab may still delete the approval
        undecided: list[str] = []  # would count if GitLab showed the group
        notes: list[str] = []
        seen: set[str] = set()
        for user in approved_by:
            login = user.username.lower()
            if login in seen:
                continue
            seen.add(login)
            if self.exclude_author and login == author:
                notes.append(f"{user.username} approved but is the author")
                continue
            if self.people.restricted:
                membership = self.people.judge(self, facts, login)
                if membership.unknown:
                    undecided.append(user.username)
                    notes.append(f"{user.username} approved; {membership.why}")
                    continue
                if not membership.counted:
                    notes.append(f"{user.username} approved but {membership.why}")
                    continue
            if login in facts.unsettled_approvers:
                unsettled.append(user.username)
            else:
                counted.append(user.username)
        if unsettled:
            notes.append(
                f"{listing(unsettled)} approved before the push to {facts.sha[:8]} and GitLab "
                "may still remove it"
            )
        details = [", ".join(counted)] if counted else []
        details += notes or ([] if counted else ["no approvals yet"])
        detail = f"{len(counted)} of {self.count}{self.source} ({'; '.join(details)})"
        if len(counted) >= self.count:
            return self.outcome(
                True,
                detail,
                negated_fix=f"have fewer than {plural(self.count, 'approval')}{self.source}",
            )
        more = self.count - len(counted)
        fix = f"get {more} more {plural(more, 'approval')[2:]}{self.source}"
        if len(counted) + len(unsettled) + len(undecided) >= self.count:
            if unsettled and len(counted) + len(unsettled) >= self.count:
                return self.undecided(
                    f"waiting for GitLab to settle approvals after the push: {detail}",
                    fix="wait: the bot looks again when GitLab has settled the approvals",
                    wake_at=facts.approvals_settle_at,
                )
            return self.undecided(detail, fix=fix)
        return self.outcome(False, detail, fix=fix)

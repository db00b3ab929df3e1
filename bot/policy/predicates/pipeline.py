"""`pipeline`: the status of the pipeline built for the head."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome, UnreadableFact
from bot.policy.nodes import Ctx, suggest
from bot.policy.predicates.base import Predicate, register

PIPELINE_STATUSES = (
    "created",
    "waiting_for_resource",
    "preparing",
    "pending",
    "running",
    "success",
    "failed",
    "canceled",
    "skipped",
    "manual",
    "scheduled",
)
_IN_PROGRESS = frozenset(
    {"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"}
)


@register
class Pipeline(Predicate):
    """`pipeline: success` or `[success, skipped]` — the status of the pipeline built for the
    MR's head is one of these. A pipeline for an older head never counts (GitLab keeps showing
    it as the head pipeline after a push until a pipeline for the new head exists)."""

    key = "pipeline"
    __slots__ = ("allowed", "wanted")

    def __init__(self, name: str | None, line: int, allowed: tuple[str, ...]) -> None:
        super().__init__(name, line, FactNeeds(pipeline=True))
        self.allowed = frozenset(allowed)
        self.wanted = " or ".join(allowed)

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        items = ctx.string_list(node, "`pipeline`", single_ok=True)
        if items is None:
            return None
        ok = True
        for status, item in items:
            if status not in PIPELINE_STATUSES:
                ctx.error(
                    item,
                    f"unknown pipeline status `{status}`{suggest(status, PIPELINE_STATUSES)} "
                    f"(one of {', '.join(PIPELINE_STATUSES)})",
                )
                ok = False
        return cls(name, line, tuple(dict.fromkeys(s for s, _ in items))) if ok else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        if "pipeline" in facts.unreadable:
            raise UnreadableFact("pipeline", facts.unreadable["pipeline"])
        status = facts.pipeline_status
        if status is not None and status in self.allowed:
            return self.outcome(
                True, f"the pipeline is {status}", negated_fix="make the pipeline not " + status
            )
        if status is None:
            stale = (
                f" (GitLab still shows the pipeline of {facts.stale_pipeline_sha[:8]})"
                if facts.stale_pipeline_sha
                else ""
            )
            return self.undecided(
                f"waiting for a pipeline for {facts.sha[:8]}{stale}",
                fix=f"run a pipeline for {facts.sha[:8]} (needs {self.wanted})",
            )
        if status in _IN_PROGRESS:
            return self.outcome(
                False,
                f"waiting for pipeline ({status})",
                fix=f"wait for the pipeline to finish (needs {self.wanted})",
            )
        return self.outcome(
            False,
            f"the pipeline is {status}, not {self.wanted}",
            fix=f"fix the pipeline and run it again until it is {self.wanted}",
        )

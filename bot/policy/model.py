"""The data the policy language produces: loaded policies, rule outcomes and verdicts.

Logs, `explain`, the decision record and the details page all render these same structures, so a
verdict reads the same wherever someone looks at it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bot.policy.facts import FactNeeds, MergeRequestFacts

Status = Literal["passed", "failed"]


@dataclass(frozen=True)
class Outcome:
    """The result of one rule (a predicate or a combinator) against one MR.

    `evidence` is one sentence saying what was seen; `fix` says what would make a failing rule pass.
    `unknown`: what GitLab showed cannot decide the rule (a diff it cut, approvals it may still
    delete, a group it would not show); `passed` is then False, so a merge gate fails closed,
    and `not` cannot turn the doubt into a pass (three-valued logic: see combinators).
    """

    rule: str
    passed: bool
    evidence: str
    children: tuple[Outcome, ...] = ()
    fix: str | None = None
    # When the outcome can change with no event (a freeze window opening or closing, GitLab
    # settling approvals after a push), the moment.
    wake_at: dt.datetime | None = None
    # For a rule that holds: what would make it stop holding. `not` offers it as its own fix.
    negated_fix: str | None = None
    unknown: bool = False

    def failing_leaves(self) -> Iterator[Outcome]:
        """The failing predicates under this outcome (the rules someone has to act on)."""
        if self.passed:
            return
        failing_children = [child for child in self.children if not child.passed]
        if not failing_children:
            yield self
            return
        for child in failing_children:
            yield from child.failing_leaves()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcome:
        """The outcome `to_dict` wrote (the decision record keeps verdicts so); `negated_fix`
        is not kept, it matters only while evaluating."""
        wake_at = data.get("wake_at")
        return cls(
            rule=str(data.get("rule", "")),
            passed=bool(data.get("passed")),
            evidence=str(data.get("evidence", "")),
            children=tuple(cls.from_dict(child) for child in data.get("children") or ()),
            fix=data.get("fix") or None,
            wake_at=dt.datetime.fromisoformat(wake_at) if wake_at else None,
            unknown=bool(data.get("unknown")),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "rule": self.rule,
            "passed": self.passed,
            "evidence": self.evidence,
        }
        if self.unknown:
            data["unknown"] = True
        if self.fix:
            data["fix"] = self.fix
        if self.wake_at:
            data["wake_at"] = self.wake_at.isoformat()
        if self.children:
            data["children"] = [child.to_dict() for child in self.children]
        return data


class Rule(Protocol):
    """A compiled rule: knows its name, what facts it reads, and how to judge an MR."""

    name: str
    line: int

    @property
    def needs(self) -> FactNeeds: ...

    def evaluate(self, facts: MergeRequestFacts) -> Outcome: ...


@dataclass(frozen=True)
class Verdict:
    """One policy's decision for one MR at one SHA."""

    check: str
    status: Status
    reason: str
    applicable: bool = True
    advisory: bool = False
    outcome: Outcome | None = None
    wake_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "reason": self.reason,
            "applicable": self.applicable,
            "advisory": self.advisory,
            "outcome": self.outcome.to_dict() if self.outcome else None,
            "wake_at": self.wake_at.isoformat() if self.wake_at else None,
        }


class UnreadableFact(Exception):
    """A rule needs a fact GitLab refused to give (403/404...): the rule is undecided, with
    GitLab's answer as the evidence, and only where the rule is actually judged."""

    def __init__(self, fact: str, reason: str) -> None:
        self.fact = fact
        self.reason = reason
        super().__init__(f"cannot read {fact}: {reason}")


def judge_rule(rule: Rule, facts: MergeRequestFacts) -> Outcome:
    """`rule.evaluate(facts)`, except that a fact GitLab refused makes the rule undecided."""
    try:
        return rule.evaluate(facts)
    except UnreadableFact as exc:
        return Outcome(
            rule=rule.name,
            passed=False,
            evidence=f"{getattr(rule, 'key', None) or rule.name}: {exc}",
            fix="let the bot's token read this (see the reason), then comment /recheck",
            unknown=True,
        )


class MissingFactError(RuntimeError):
    """A rule needs a fact that was not fetched: a bug in fetching (needs), never a verdict."""

    def __init__(self, rule: str, fact: str) -> None:
        self.rule = rule
        self.fact = fact
        super().__init__(
            f"rule `{rule}` needs the MR's {fact}, but they were not fetched "
            f"(the fetcher must honour Policy.needs)"
        )


@dataclass(frozen=True)
class PolicyProblem:
    """One error in a policy file, reported as `path:line: message`."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class PolicyLoadError(Exception):
    """A policy file (or set of files) could not be loaded; carries every problem found."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


@dataclass(frozen=True)
class Policy:
    """One loaded policy file: the status check it decides and its compiled rules."""

    check: str
    path: str
    digest: str
    rules: tuple[Rule, ...]
    applies_to: tuple[Rule, ...] = ()
    description: str = ""
    mode: Literal["enforce", "advisory"] = "enforce"
    comment: Literal["never", "on_failure", "always"] = "never"
    line: int = 1
    # Central only: a repository's policy for the same check may replace this one instead of
    # adding to it (docs/architecture.md#repository-policies).
    replaceable: bool = False

    @property
    def needs(self) -> FactNeeds:
        needs = FactNeeds()
        for rule in (*self.applies_to, *self.rules):
            needs = needs | rule.needs
        return needs


@dataclass(frozen=True)
class PolicySet:
    """Every policy loaded from a folder, keyed by check name."""

    policies: tuple[Policy, ...] = ()
    digest: str = ""
    by_check: dict[str, Policy] = field(default_factory=dict)

    def get(self, check: str) -> Policy | None:
        return self.by_check.get(check)

    def __len__(self) -> int:
        return len(self.policies)

"""Repository policies over central floors: which policy decides each check, and how.

A project may keep policies in its repository (`.gitlab/status-checks/`, read from the MR's
target branch). Central policies (POLICY_DIR) are floors
(docs/architecture.md#repository-policies):

- a check only one layer defines is decided by that layer;
- a check both define is decided by both: each layer is judged on its own (its own scope, its own
  mode) and both must hold, so a repository can add rules but never remove, weaken, narrow or
  make advisory the central ones;
- a central policy with `replaceable: true` is replaced by the repository's;
- a repository file that does not load fails the checks it defines with `file:line: message`;
- repository policies that cannot be read (GitLab failed) fail, undecided, every check: they
  could add rules to any of them; a central floor is still judged but cannot pass it alone.

Every rule of a layered check says which layer it came from (the central file, or the repository
path@sha), so the explanation, the details page, the MR note and `history` all show it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

from bot.policy.evaluate import evaluate
from bot.policy.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.policy.loader import (
    REPOSITORY_FOLDER,
    Claim,
    check_duplicates,
    compile_policy,
    is_policy_file,
    is_test_file,
    repository_refusals,
)
from bot.policy.model import Outcome, Policy, PolicyProblem, PolicySet, judge_rule

FOLDER = REPOSITORY_FOLDER
MAX_FILES = 100  # policy and test files read from one folder; more is a problem, not a read
VALIDATE_FIX = (
    "fix the file on the target branch (by merge request); "
    "`python -m bot validate .gitlab/status-checks` shows every problem"
)


def is_repository_policy(path: str) -> bool:
    """A policy file of the folder (directly in it; tests and hidden files are not)."""
    pure = PurePosixPath(path)
    return str(pure.parent) == FOLDER and is_policy_file(pure)


def is_repository_test(path: str) -> bool:
    """A test file of the folder: beside the policies, or under `tests/`."""
    pure = PurePosixPath(path)
    return str(pure.parent) in (FOLDER, f"{FOLDER}/tests") and is_test_file(pure)


def short(sha: str) -> str:
    return sha[:12]


@dataclass(frozen=True)
class RepositoryLayer:
    """The policies a repository keeps at one commit: those that load, by check, and the
    problems of those that do not, by the check they define (or would, by file name)."""

    sha: str
    policies: Mapping[str, Policy] = field(default_factory=dict)
    broken: Mapping[str, tuple[PolicyProblem, ...]] = field(default_factory=dict)
    digest: str = ""
    files: tuple[str, ...] = ()

    @property
    def checks(self) -> frozenset[str]:
        return frozenset(self.policies) | frozenset(self.broken)

    @property
    def problems(self) -> list[PolicyProblem]:
        seen = {str(p): p for problems in self.broken.values() for p in problems}
        return list(seen.values())


EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def compile_layer(sha: str, files: Iterable[tuple[str, bytes]]) -> RepositoryLayer:
    """The policy files of the folder at commit `sha` (path, bytes) compiled. Never raises: a
    file that does not load becomes problems of the check it defines."""
    policies: dict[str, Policy] = {}
    broken: dict[str, list[PolicyProblem]] = {}
    claims: list[Claim] = []
    digest = hashlib.sha256()
    paths: list[str] = []
    for path, data in sorted(files):
        if not is_repository_policy(path):
            continue
        paths.append(path)
        digest.update(path.encode() + b"\0" + data + b"\0")
        stem = PurePosixPath(path).name.split(".")[0]
        policy, ctx = compile_policy(path, data, stem)
        check = ctx.check[0] if ctx.check is not None else stem
        if ctx.check is not None:
            claims.append(Claim(ctx.check[0], path, ctx.check[1]))
        line = ctx.check[1] if ctx.check is not None else 1
        replaceable = policy is not None and policy.replaceable
        refused = repository_refusals(path, check, line, replaceable)
        if refused:
            ctx.problems += refused
            policy = None
        if policy is None or ctx.problems:
            broken.setdefault(check, []).extend(ctx.problems)
            continue
        policies[check] = replace(policy, path=f"{path}@{short(sha)}")
    for problem in check_duplicates(claims):
        check = problem.message.split("`")[1]
        broken.setdefault(check, []).append(problem)
        policies.pop(check, None)
    return RepositoryLayer(
        sha=sha,
        policies=policies,
        broken={check: tuple(problems) for check, problems in broken.items()},
        digest=digest.hexdigest() if paths else EMPTY_DIGEST,
        files=tuple(paths),
    )


# -- rules that stand for a whole layer ----------------------------------------------------------


def _tag(outcome: Outcome, label: str) -> Outcome:
    """Every predicate under `outcome` says which layer it came from."""
    if not outcome.children:
        return replace(outcome, evidence=f"{outcome.evidence} [{label}]")
    return replace(outcome, children=tuple(_tag(child, label) for child in outcome.children))


@dataclass
class LayerRule:
    """One layer's policy for a check, judged whole (its scope, rules and mode) as one rule."""

    name: str
    policy: Policy
    line: int = 1

    @property
    def needs(self) -> FactNeeds:
        return self.policy.needs

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        verdict = evaluate(self.policy, facts)
        root = verdict.outcome
        assert root is not None  # evaluate always explains
        passed = verdict.status == "passed"
        if not verdict.applicable:
            return Outcome(self.name, True, f"{self.name}: {verdict.reason}")
        return Outcome(
            rule=self.name,
            passed=passed,
            evidence=f"{self.name}: {verdict.reason}",
            children=tuple(_tag(child, self.name) for child in root.children),
            fix=None if passed else root.fix,
            wake_at=verdict.wake_at,
            unknown=root.unknown and not passed,
        )


@dataclass
class BrokenFile:
    """A repository file that does not load: the check it defines fails with its problems."""

    name: str
    problems: tuple[PolicyProblem, ...]
    line: int = 1

    @property
    def needs(self) -> FactNeeds:
        return NO_NEEDS

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        shown = "; ".join(str(problem) for problem in self.problems[:5])
        more = len(self.problems) - 5
        if more > 0:
            shown += f"; and {more} more"
        return Outcome(
            rule=self.name,
            passed=False,
            evidence=f"{self.name}: the repository policy does not load: {shown}",
            fix=VALIDATE_FIX,
        )


@dataclass
class Unreadable:
    """Repository policies GitLab would not give: undecided until they can be read."""

    name: str
    reason: str
    retry_at: dt.datetime | None = None
    line: int = 1

    @property
    def needs(self) -> FactNeeds:
        return NO_NEEDS

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        return Outcome(
            rule=self.name,
            passed=False,
            evidence=f"{self.name}: waiting for the repository policies: {self.reason}",
            fix="nothing to do if GitLab recovers: the bot looks again by itself",
            wake_at=self.retry_at,
            unknown=True,
        )


@dataclass
class LayersApply:
    """The scope of a layered check: it applies when any layer's `applies_to` takes the MR, so
    an MR every layer leaves out is `not applicable` (as with one policy), never "rules hold"."""

    layers: tuple[LayerRule, ...]
    name: str = "applies_to"
    line: int = 1

    @property
    def needs(self) -> FactNeeds:
        needs = NO_NEEDS
        for layer in self.layers:
            for rule in layer.policy.applies_to:
                needs = needs | rule.needs
        return needs

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        reasons = []
        for layer in self.layers:
            judged = (judge_rule(rule, facts) for rule in layer.policy.applies_to)
            out = next((o for o in judged if not o.passed and not o.unknown), None)
            if out is None:
                return Outcome(self.name, True, f"{layer.name} applies")
            reasons.append(f"{layer.name}: {out.evidence}")
        return Outcome(self.name, False, "; ".join(reasons))


# -- the decided set ------------------------------------------------------------------------------

Layer = LayerRule | BrokenFile | Unreadable
Comment = Literal["never", "on_failure", "always"]
COMMENT_ORDER: tuple[Comment, ...] = (
    "never",
    "on_failure",
    "always",
)


def stacked(check: str, layers: Sequence[Layer], central: Policy | None) -> Policy:
    """One policy for `check` whose rules are its layers: all must hold."""
    policies = [layer.policy for layer in layers if isinstance(layer, LayerRule)]
    advisory = bool(policies) and len(policies) == len(layers)
    advisory = advisory and all(p.mode == "advisory" for p in policies)
    comments = [p.comment for p in policies]
    if len(policies) < len(layers):
        comments.append("on_failure")  # a broken or unreadable repository layer is news
    comment: Comment = max(comments, key=COMMENT_ORDER.index, default="never")
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(layer.name.encode() + b"\0")
        if isinstance(layer, LayerRule):
            digest.update(layer.policy.digest.encode())
    scoped = [layer for layer in layers if isinstance(layer, LayerRule)]
    every_scoped = len(scoped) == len(layers) and all(r.policy.applies_to for r in scoped)
    applies_to = (LayersApply(tuple(scoped)),) if every_scoped else ()
    description = next((p.description for p in policies if p.description), "")
    if not description and central is not None:
        description = central.description
    return Policy(
        check=check,
        path=" + ".join(layer.name for layer in layers),
        digest=digest.hexdigest(),
        rules=tuple(layers),
        applies_to=applies_to,
        description=description,
        mode="advisory" if advisory else "enforce",
        comment=comment,
    )


def central_label(policy: Policy) -> str:
    return f"central {policy.path}"


def repository_label(path: str) -> str:
    return f"repository {path}"


def layered(
    central: PolicySet,
    layer: RepositoryLayer | None,
    *,
    unreadable: str | None = None,
    retry_at: dt.datetime | None = None,
    last_known: frozenset[str] = frozenset(),
    listed: Iterable[str] = (),
) -> PolicySet:
    """The policies deciding each check, the repository's `layer` over the `central` floors.

    `unreadable`: why the repository policies could not be read. They may add rules to any
    check, so every `listed` check (and every check the branch's policies defined when last
    read) is undecided until `retry_at`: its central floor is still judged, and can fail it,
    but cannot pass it alone (README "Policies in your repository"). Checks the repository
    does not touch keep their central Policy object as it is."""
    by_check: dict[str, Policy] = dict(central.by_check)
    if unreadable is not None:
        where = f"{FOLDER} (unreadable)"
        for check in {*listed, *last_known}:
            floor = central.get(check)
            layers: list[Layer] = []
            if floor is not None and not floor.replaceable:
                layers.append(LayerRule(central_label(floor), floor))
            layers.append(Unreadable(repository_label(where), unreadable, retry_at))
            by_check[check] = stacked(check, layers, floor)
        return _set(central, by_check, f"unreadable:{unreadable}")
    if layer is None or not layer.checks:
        return central
    for check in sorted(layer.checks):
        floor = central.get(check)
        layers = []
        if floor is not None and not floor.replaceable:
            layers.append(LayerRule(central_label(floor), floor))
        if check in layer.broken:
            problems = layer.broken[check]
            label = repository_label(f"{problems[0].path}@{short(layer.sha)}")
            layers.append(BrokenFile(label, problems))
        else:
            policy = layer.policies[check]
            layers.append(LayerRule(repository_label(policy.path), policy))
        by_check[check] = stacked(check, layers, floor)
    return _set(central, by_check, layer.digest)


def _set(central: PolicySet, by_check: dict[str, Policy], salt: str) -> PolicySet:
    digest = hashlib.sha256(f"{central.digest}\0{salt}".encode()).hexdigest()
    return PolicySet(policies=tuple(by_check.values()), digest=digest, by_check=by_check)

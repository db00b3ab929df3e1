"""What a policy change would do before it merges: the open MRs whose verdict would flip.

Two users (docs/architecture.md#repository-policies): an MR that changes
`.gitlab/status-checks/` (its own status check, `status-check-policies`, and a section of the MR
note), and `python -m bot preview` for a proposed central folder. Both replay open MRs read-only:
each MR is read once (the snapshot, with the facts both policy sets need), judged under the
current and the proposed policies, and nothing is posted. Both are bounded (MAX_MERGE_REQUESTS
open MRs) and paced by a request budget (SWEEP_BUDGET), so a preview never eats GitLab's rate
limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.gitlab.client import GitLab, GitLabError, RequestBudget
from bot.gitlab.snapshot import SnapshotReader, StatusCheck
from bot.logs import get_logger
from bot.policy.evaluate import applies, judge, needs_of
from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.layers import (
    FOLDER,
    RepositoryLayer,
    compile_layer,
    layered,
    short,
)
from bot.policy.loader import POLICY_CHECK, validate_paths
from bot.policy.model import Outcome, Policy, PolicySet, Verdict
from bot.policy.testing import run_tests
from bot.service.repository import RepositoryPolicies, TooManyFiles

log = get_logger(__name__)

MAX_MERGE_REQUESTS = 50  # open MRs one preview looks at, at most
BASE_REQUESTS = 2  # the MR and its status checks, for each MR replayed
PREVIEW_RULE = "preview"
RETRY_SECONDS = 30.0  # before looking again when GitLab would not give the proposed files


@dataclass(frozen=True)
class Flip:
    """One open MR's verdict for one check, now and with the proposed policies."""

    reference: str  # `!12`, or `group/app!12` across projects
    check: str
    before: Verdict
    after: Verdict

    @property
    def line(self) -> str:
        """`!12 size-limit: passed → failed: changed_lines 812 > max 400`."""
        why = self.after.reason if self.after.status == "failed" else self.before.reason
        if self.after.status == "passed":
            why = f"no longer: {why}"
        return f"{self.reference} {self.check}: {self.before.status} → {self.after.status}: {why}"


@dataclass
class Replay:
    """What replaying open MRs found."""

    flips: list[Flip] = field(default_factory=list)
    examined: int = 0
    left_out: int = 0  # open MRs past the bound
    unreadable: list[str] = field(default_factory=list)  # MRs GitLab would not give, and why


# The policies judging one MR now and as proposed, given its facts (target branch...).
SetsFor = Callable[[MergeRequestFacts], Awaitable[tuple[PolicySet, PolicySet]]]


async def replay(
    reader: SnapshotReader,
    merge_requests: Sequence[dict[str, Any]],
    sets_for: SetsFor,
    *,
    budget: RequestBudget | None = None,
    reference: Callable[[dict[str, Any]], str] = lambda mr: f"!{mr['iid']}",
    limit: int = MAX_MERGE_REQUESTS,
) -> Replay:
    """Judge each open MR under both policy sets, read-only; the flips, in MR order."""
    found = Replay(left_out=max(0, len(merge_requests) - limit))
    for mr in merge_requests[:limit]:
        sets: list[tuple[PolicySet, PolicySet]] = []

        async def needs_for(
            facts: MergeRequestFacts,
            checks: Sequence[StatusCheck],
            sets: list[tuple[PolicySet, PolicySet]] = sets,
        ) -> FactNeeds:
            before, after = await sets_for(facts)
            sets.append((before, after))
            judged = [
                p for c in checks for s in (before, after) if (p := s.get(c.name)) is not None
            ]
            return needs_of([p for p in judged if applies(p, facts)])

        if budget is not None:
            await budget.spend(BASE_REQUESTS)
        try:
            snapshot = await reader.read(int(mr["project_id"]), int(mr["iid"]), needs_for)
        except GitLabError as exc:
            found.unreadable.append(f"{reference(mr)}: {exc.advice()}")
            continue
        found.examined += 1
        if not sets or snapshot.facts.state != "opened":
            continue
        before, after = sets[0]
        for check in snapshot.checks:
            old, new = before.get(check.name), after.get(check.name)
            if old is None and new is None:
                continue
            was = _verdict(old, snapshot.facts, check.name)
            will = _verdict(new, snapshot.facts, check.name)
            if was.status != will.status:
                found.flips.append(Flip(reference(mr), check.name, was, will))
    return found


def _verdict(policy: Policy | None, facts: MergeRequestFacts, check: str) -> Verdict:
    if policy is None:  # no policy: GitLab's check is left alone (pending, blocking)
        return Verdict(check, "failed", "no policy decides it: GitLab leaves it pending")
    return judge(policy, facts)


# -- the proposed repository folder of an MR -----------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """The proposed folder validated and its test cases run."""

    problems: tuple[str, ...]
    passed: int
    failed: tuple[str, ...]


def check_files(files: Sequence[tuple[str, bytes]]) -> Checked:
    """`validate` and `test` on the proposed files (in a scratch folder; run in a thread)."""
    with tempfile.TemporaryDirectory(prefix="bot-preview-") as scratch:
        root = Path(scratch)
        for path, data in files:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        folder = root / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"{root}/"
        # The proposal is untrusted: its test files may name policy files only inside it.
        problems = tuple(
            str(p).replace(prefix, "") for p in validate_paths([str(folder)], confine=folder)
        )
        out = io.StringIO()
        passed, failed = run_tests([str(folder)], out, confine=folder)
        failures = tuple(
            line.replace(prefix, "")
            for line in out.getvalue().splitlines()
            if line.startswith(("FAIL", "ERROR"))
        )
    return Checked(problems, passed, failures if failed else ())


@dataclass
class _Fixed:
    """A rule whose outcome was worked out before judging (the preview's parts)."""

    name: str
    outcome: Outcome
    line: int = 1

    @property
    def needs(self) -> FactNeeds:
        return FactNeeds()

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        return self.outcome


def policy_check(layer_label: str, checked: Checked | None, found: Replay | None) -> Policy:
    """The `status-check-policies` policy for one MR: its rules are the proposed files
    loading, their test cases passing, and the preview (which always holds: it informs)."""
    if checked is None or found is None:
        unchanged = Outcome("unchanged", False, f"this MR does not change {FOLDER}/")
        return Policy(
            check=POLICY_CHECK,
            path="built in",
            digest="",
            rules=(_Fixed("unchanged", Outcome("unchanged", True, "nothing to check")),),
            applies_to=(_Fixed("unchanged", unchanged),),
        )
    fix = f"correct the files of {FOLDER}/ on this MR's branch"
    load = Outcome(
        "proposed files load",
        not checked.problems,
        "the proposed policies load"
        if not checked.problems
        else "the proposed policies do not load: " + "; ".join(checked.problems[:10]),
        fix=None if not checked.problems else fix,
    )
    # A problem `validate` found is shown once, under the files, not again as a test ERROR.
    failed = [f for f in checked.failed if f.removeprefix("ERROR ") not in checked.problems]
    if failed:
        said = f"{len(failed)} test cases fail: " + "; ".join(failed[:10])
    elif checked.failed:
        said = "the test cases cannot run until the files load"
    else:
        said = f"{checked.passed} test cases pass"
    tests = Outcome(
        "proposed test cases pass",
        not checked.failed,
        said,
        fix="make the cases pass, or correct the policies" if failed else None,
    )
    flips = tuple(Outcome(flip.check, True, flip.line) for flip in found.flips)
    flipped = len(found.flips)
    if flipped == 1:
        summary = "1 verdict of an open MR would change"
    elif flipped:
        summary = f"{flipped} verdicts of open MRs would change"
    else:
        summary = f"no verdict of the {found.examined} open MRs looked at would change"
    if found.left_out:
        summary += f" ({found.left_out} more open MRs not looked at)"
    if found.unreadable:
        summary += f" ({len(found.unreadable)} could not be read)"
    preview = Outcome(PREVIEW_RULE, True, f"{PREVIEW_RULE}: {summary}", children=flips)
    digest = hashlib.sha256(layer_label.encode()).hexdigest()
    return Policy(
        check=POLICY_CHECK,
        path=layer_label,
        digest=digest,
        rules=(
            _Fixed(load.rule, load),
            _Fixed(tests.rule, tests),
            _Fixed(PREVIEW_RULE, preview),
        ),
        description=f"The policies this MR proposes for {FOLDER}/: valid, tested, and what "
        "they would change",
        comment="always",
    )


def preview_lines(outcome: Outcome | None) -> list[str]:
    """The flips a `status-check-policies` verdict found (for the MR note), and its summary."""
    if outcome is None:
        return []
    for child in outcome.children:
        if child.rule == PREVIEW_RULE:
            return [child.evidence, *(flip.evidence for flip in child.children)]
    return []


class PolicyMRs:
    """Judges `status-check-policies` for an MR: read-only, once per (head, target head)."""

    def __init__(
        self,
        gitlab: GitLab,
        repository: RepositoryPolicies,
        reader: SnapshotReader,
        central: Callable[[], PolicySet],
        *,
        budget: float = 5.0,
        limit: int = MAX_MERGE_REQUESTS,
    ) -> None:
        self.gitlab = gitlab
        self.repository = repository
        self.reader = reader
        self.central = central
        self.budget = RequestBudget(budget)
        self.limit = limit
        self._done: dict[tuple[Any, ...], Policy] = {}
        self.check = POLICY_CHECK

    async def policy_for(self, facts: MergeRequestFacts, mr: Mapping[str, Any]) -> Policy:
        """The check's policy for this MR; GitLab failing makes it wait (failed, undecided)."""
        try:
            return await self._policy_for(facts, mr)
        except TooManyFiles as exc:  # the proposed files' problem: no waiting, a push fixes it
            fix = f"remove files of {FOLDER}/ on this MR's branch"
            failed = Outcome("proposed files load", False, f"not read: {exc}", fix=fix)
            rules = (_Fixed(failed.rule, failed),)
            return Policy(check=POLICY_CHECK, path="built in", digest="", rules=rules)
        except (GitLabError, OSError) as exc:
            # OSError: the scratch folder for `validate`/`test` failed (a full disk): wait too.
            reason = exc.advice() if isinstance(exc, GitLabError) else f"{type(exc).__name__}"
            log.warning("policy_preview_unreadable", mr=facts.iid, error=reason)
            waiting = Outcome(
                "proposed policies",
                False,
                f"waiting for the proposed policies: {reason}",
                fix="nothing to do if GitLab recovers: the bot looks again by itself",
                wake_at=facts.now + dt.timedelta(seconds=RETRY_SECONDS),
                unknown=True,
            )
            rules = (_Fixed(waiting.rule, waiting),)
            return Policy(check=POLICY_CHECK, path="built in", digest="", rules=rules)

    async def _policy_for(self, facts: MergeRequestFacts, mr: Mapping[str, Any]) -> Policy:
        project, head = facts.project_id, facts.sha
        target = await self.repository.for_target(project, facts.target_branch)
        if target.problem is not None:
            raise GitLabError(503, target.problem, path="/repository")
        target_sha = target.layer.sha if target.layer is not None else ""
        refs = mr.get("diff_refs") if isinstance(mr.get("diff_refs"), dict) else None
        base = str((refs or {}).get("base_sha") or target_sha)
        proposed_ids = await self.repository.blob_ids(project, head)
        # The same folder as the target branch's (the usual case: read already) or as the
        # merge base's: nothing proposed.
        if await self.repository.holds(project, target_sha, proposed_ids) or (
            base != target_sha and await self.repository.holds(project, base, proposed_ids)
        ):
            return policy_check("", None, None)
        central = self.central()
        slot = (project, facts.iid, head, target_sha, central.digest)
        if slot in self._done:
            return self._done[slot]
        files = await self.repository.files_at(project, head)
        checked = await asyncio.to_thread(check_files, files)
        proposed = await asyncio.to_thread(compile_layer, head, files)
        current = target.layer or RepositoryLayer(target_sha)
        found = await self._replay(facts, central, current, proposed)
        log.info(
            "policy_preview",
            project=facts.project_path,
            mr=facts.iid,
            sha=head,
            problems=len(checked.problems),
            test_failures=len(checked.failed),
            examined=found.examined,
            flips=len(found.flips),
        )
        label = f"repository {FOLDER}@{short(head)} (proposed by !{facts.iid})"
        policy = policy_check(label, checked, found)
        if len(self._done) > 1000:
            self._done.clear()
        self._done[slot] = policy
        return policy

    async def _replay(
        self,
        facts: MergeRequestFacts,
        central: PolicySet,
        current: RepositoryLayer,
        proposed: RepositoryLayer,
    ) -> Replay:
        others = [
            mr
            for mr in await self.gitlab.merge_requests_for_target(
                facts.project_id, facts.target_branch
            )
            if int(mr.get("iid", 0)) != facts.iid
        ]
        before, after = layered(central, current), layered(central, proposed)

        async def sets_for(_: MergeRequestFacts) -> tuple[PolicySet, PolicySet]:
            return before, after

        return await replay(self.reader, others, sets_for, budget=self.budget, limit=self.limit)

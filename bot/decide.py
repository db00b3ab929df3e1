"""One evaluation: read the MR, judge every listed check that has a policy, post what differs.

Reads happen in one concurrent round (MR, its status checks, and the optional facts the likely
policies need); a second round only happens when the payload's hints were wrong. A verdict is
posted only where GitLab shows something else (DESIGN principle 4), and a 409 means the head moved:
the MR is looked at again, never judged for the old SHA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bot.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.fetch import GroupDirectory, base_facts, merge_facts, read_optional
from bot.gitlab import GitLab, GitLabError
from bot.keys import BranchKey, Hint, MRKey
from bot.logs import get_logger
from bot.policy import evaluate
from bot.policy.model import Policy, PolicySet, Verdict

log = get_logger(__name__)

MAX_RETRY_DELAY = 300.0
POSTED_MEMORY = 100_000


@dataclass(frozen=True)
class Decision:
    """One verdict for one check of one MR at one SHA, and what was done about it."""

    key: MRKey
    project_path: str
    sha: str
    check: str
    check_id: int
    verdict: Verdict
    gitlab_status: str
    action: str  # posted | unchanged | not_reportable | stale
    policy: Policy
    trigger: str
    at: dt.datetime
    # GitLab showed a verdict for this SHA that the bot never posted (someone set it by hand).
    tampered: bool = False


DecisionListener = Callable[[Decision], Awaitable[None] | None]
# Called once per completed evaluation with all its decisions (e.g. one sticky note per MR).
EvaluationListener = Callable[[MRKey, MergeRequestFacts, list[Decision]], Awaitable[None] | None]


def status_shown(verdict: Verdict, gitlab_status: str, *, reports_failures: bool) -> bool:
    """Whether GitLab already shows this verdict (14.x shows `approved` for a passed check)."""
    if verdict.status == "passed":
        return gitlab_status in ("passed", "approved")
    if reports_failures:
        return gitlab_status == "failed"
    return gitlab_status != "approved"


def _hint_facts(key: MRKey, hint: Hint | None) -> MergeRequestFacts | None:
    if hint is None or not hint.project_path or not hint.target_branch:
        return None
    return MergeRequestFacts(
        project_id=key.project_id,
        project_path=hint.project_path,
        iid=key.iid,
        sha=hint.sha or "",
        source_branch=hint.source_branch or "",
        target_branch=hint.target_branch,
    )


def applies(policy: Policy, facts: MergeRequestFacts, *, unknown: bool = True) -> bool:
    """Whether `policy` applies, judging only scope rules that need no optional fact.

    Rules that need optional facts (e.g. `changed_files`) count as `unknown`.
    """
    for rule in policy.applies_to:
        if rule.needs:
            if not unknown:
                return False
            continue
        if not rule.evaluate(facts).passed:
            return False
    return True


def needs_of(policies: Sequence[Policy]) -> FactNeeds:
    needs = NO_NEEDS
    for policy in policies:
        needs = needs | policy.needs
    return needs


class Evaluator:
    """The queue's handler: one call per MR key (or branch key) taken off the queue."""

    def __init__(
        self,
        gitlab: GitLab,
        policies: Callable[[], PolicySet],
        *,
        submit: Callable[[MRKey, Hint], Any],
        groups: GroupDirectory | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.gitlab = gitlab
        self.policies = policies
        self.submit = submit
        self.groups = groups or GroupDirectory(gitlab)
        self.clock = clock
        self.listeners: list[DecisionListener] = []
        self.retry_base = 5.0  # seconds before re-evaluating after a transient GitLab failure
        self.evaluation_listeners: list[EvaluationListener] = []
        self._known_checks: dict[int, frozenset[str]] = {}
        self._failures: dict[MRKey, int] = {}
        self._warned: set[tuple[int, int | None, str]] = set()
        # What this process last posted per (MR, check): (sha, status). Bounded, oldest dropped.
        self._posted: dict[tuple[MRKey, str], tuple[str, str]] = {}

    # -- the queue's entry point --------------------------------------------------------------

    async def __call__(self, key: MRKey | BranchKey, hint: Hint | None) -> float | None:
        try:
            if isinstance(key, BranchKey):
                await self._resolve_branch(key, hint)
                return None
            delay = await self.evaluate(key, hint)
        except GitLabError as exc:
            return self._on_gitlab_error(key, exc)
        if isinstance(key, MRKey):
            self._failures.pop(key, None)
        return delay

    def _on_gitlab_error(self, key: MRKey | BranchKey, exc: GitLabError) -> float | None:
        project_id = key.project_id
        if exc.transient:
            failures = self._failures.get(key, 0) + 1 if isinstance(key, MRKey) else 1
            if isinstance(key, MRKey):
                self._failures[key] = failures
            delay = min(MAX_RETRY_DELAY, self.retry_base * 2 ** (failures - 1))
            delay *= random.uniform(0.8, 1.2)
            log.warning(
                "gitlab_unavailable", key=str(key), error=exc.advice(), retry_in=round(delay, 1)
            )
            return delay
        # 401/403/404 and friends: retrying will not help; say once what to fix.
        warn_key = (project_id, exc.status, exc.path.rsplit("/", 1)[-1])
        if warn_key not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(warn_key)
            log.error("gitlab_refused", key=str(key), path=exc.path, advice=exc.advice())
        else:
            log.debug("gitlab_refused", key=str(key), path=exc.path, status=exc.status)
        if isinstance(key, MRKey):
            self._failures.pop(key, None)
        return None

    async def _resolve_branch(self, key: BranchKey, hint: Hint | None) -> None:
        merge_requests = await self.gitlab.merge_requests_for_branch(key.project_id, key.branch)
        for mr in merge_requests:
            project_id = mr.get("project_id", key.project_id)
            self.submit(MRKey(int(project_id), int(mr["iid"])), hint or Hint(trigger="pipeline"))
        if not merge_requests:
            log.debug("pipeline_without_mr", key=str(key))

    # -- one evaluation ---------------------------------------------------------------------

    async def evaluate(self, key: MRKey, hint: Hint | None = None) -> float | None:
        policy_set = self.policies()
        trigger = hint.trigger if hint else "sweep"
        if not policy_set.policies:
            log.warning("no_policies", key=str(key))
            return None
        prefetch = self._prefetch_needs(policy_set, key, hint)
        mr, listed, optional = await asyncio.gather(
            self.gitlab.merge_request(key.project_id, key.iid),
            self.gitlab.status_checks(key.project_id, key.iid),
            read_optional(self.gitlab, self.groups, key.project_id, key.iid, prefetch),
        )
        facts = base_facts(mr, project_path=hint.project_path if hint else None)
        facts = replace(facts, now=self.clock())
        log_ctx = {"project": facts.project_path, "mr": key.iid, "sha": facts.sha}
        if facts.state != "opened":
            log.info("skipped", reason=f"merge request is {facts.state}", **log_ctx)
            return None
        self._known_checks[key.project_id] = frozenset(str(c.get("name")) for c in listed)
        matched: list[tuple[dict[str, Any], Policy]] = []
        unmatched = []
        for check in listed:
            policy = policy_set.get(str(check.get("name")))
            if policy is None:
                unmatched.append(str(check.get("name")))
            else:
                matched.append((check, policy))
        if unmatched:
            log.info("checks_without_policy", checks=unmatched, **log_ctx)
        if not matched:
            log.info("no_matching_checks", listed=len(listed), **log_ctx)
            return None
        facts = merge_facts(facts, optional)
        scoped = [policy for _, policy in matched if applies(policy, facts)]
        missing = needs_of(scoped) - prefetch
        if missing:
            log.debug("second_read_round", needs=missing.describe(), **log_ctx)
            more = await read_optional(self.gitlab, self.groups, key.project_id, key.iid, missing)
            facts = merge_facts(facts, more)
        decisions = await self._decide(key, facts, matched, trigger)
        if decisions is None:
            return 0.0  # the head moved under us: look again at once
        await self._notify_evaluation(key, facts, decisions)
        wakes = [d.verdict.wake_at for d in decisions if d.verdict.wake_at is not None]
        if wakes:
            return max(1.0, (min(wakes) - facts.now).total_seconds() + 1.0)
        return None

    def _prefetch_needs(self, policy_set: PolicySet, key: MRKey, hint: Hint | None) -> FactNeeds:
        """The optional facts the policies that probably apply will read (hints are guesses)."""
        known = self._known_checks.get(key.project_id)
        candidates = [p for p in policy_set.policies if known is None or p.check in known]
        guess = _hint_facts(key, hint)
        if guess is not None:
            candidates = [p for p in candidates if applies(p, guess)]
        return needs_of(candidates)

    async def _decide(
        self,
        key: MRKey,
        facts: MergeRequestFacts,
        matched: list[tuple[dict[str, Any], Policy]],
        trigger: str,
    ) -> list[Decision] | None:
        reports_failures = self.gitlab.reports_failures
        decisions: list[Decision] = []
        posts: list[tuple[Decision, Awaitable[None]]] = []
        for check, policy in matched:
            verdict = evaluate(policy, facts)
            shown = str(check.get("status") or "pending")
            if status_shown(verdict, shown, reports_failures=reports_failures):
                action = "unchanged"
            elif verdict.status == "failed" and not reports_failures:
                action = "not_reportable"
            else:
                action = "posted"
            tampered = action == "posted" and self._looks_forged(
                key, policy.check, facts.sha, shown
            )
            decision = Decision(
                key=key,
                project_path=facts.project_path,
                sha=facts.sha,
                check=policy.check,
                check_id=int(check["id"]),
                verdict=verdict,
                gitlab_status=shown,
                action=action,
                policy=policy,
                trigger=trigger,
                at=facts.now,
                tampered=tampered,
            )
            decisions.append(decision)
            if action == "posted":
                post = self.gitlab.post_status(
                    key.project_id, key.iid, decision.check_id, facts.sha, verdict.status
                )
                posts.append((decision, post))
        results = await asyncio.gather(*(post for _, post in posts), return_exceptions=True)
        failed = dict(zip((id(d) for d, _ in posts), results, strict=True))
        head_moved = False
        errors: list[GitLabError] = []
        for index, decision in enumerate(decisions):
            error = failed.get(id(decision))
            if isinstance(error, GitLabError) and error.head_moved:
                head_moved = True
                decisions[index] = decision = replace(decision, action="stale")
            elif isinstance(error, BaseException):
                errors.append(
                    error if isinstance(error, GitLabError) else GitLabError(None, str(error))
                )
                continue
            elif decision.action == "posted":
                self._remember_post(decision)
            await self._announce(decision)
        if head_moved:
            log.info("head_moved", project=facts.project_path, mr=key.iid, sha=facts.sha)
            return None
        if errors:
            raise errors[0]
        return decisions

    def _looks_forged(self, key: MRKey, check: str, sha: str, shown: str) -> bool:
        """GitLab shows a verdict for this SHA that differs from what we posted for it, or one we
        never posted (a `passed` nobody here decided). Memory starts empty at each start."""
        if shown not in ("passed", "failed", "approved"):
            return False
        last = self._posted.get((key, check))
        if last is None:
            return shown in ("passed", "approved")
        return last[0] == sha and last[1] != shown

    def _remember_post(self, decision: Decision) -> None:
        status = decision.verdict.status
        if status == "passed" and not self.gitlab.reports_failures:
            status = "approved"
        slot = (decision.key, decision.check)
        self._posted.pop(slot, None)
        self._posted[slot] = (decision.sha, status)
        if len(self._posted) > POSTED_MEMORY:
            del self._posted[next(iter(self._posted))]

    async def _notify_evaluation(
        self, key: MRKey, facts: MergeRequestFacts, decisions: list[Decision]
    ) -> None:
        for listener in self.evaluation_listeners:
            try:
                result = listener(key, facts, decisions)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("evaluation_listener_failed", mr=key.iid)

    async def _announce(self, decision: Decision) -> None:
        verdict = decision.verdict
        where = {
            "project": decision.project_path,
            "mr": decision.key.iid,
            "sha": decision.sha,
            "check": decision.check,
        }
        if decision.tampered:
            log.warning(
                "tamper",
                **where,
                shown=decision.gitlab_status,
                verdict=verdict.status,
                reason="GitLab showed a status for this SHA that the bot did not post; overwritten",
            )
        log.info(
            "decision",
            **where,
            project_id=decision.key.project_id,
            policy=decision.policy.path,
            verdict=verdict.status,
            applicable=verdict.applicable,
            advisory=verdict.advisory,
            reason=verdict.reason,
            gitlab_status=decision.gitlab_status,
            action=decision.action,
            trigger=decision.trigger,
        )
        for listener in self.listeners:
            try:
                result = listener(decision)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("decision_listener_failed", check=decision.check)

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bot.facts import NO_NEEDS, FactNeeds, MergeRequestFacts
from bot.fetch import GroupDirectory, base_facts, merge_facts, read_optional
from bot.gitlab import GitLab, GitLabError
from bot.keys import BranchKey, Hint, MRKey
from bot.logs import get_logger
from bot.policy import evaluate
from bot.policy.model import MissingFactError, Outcome, Policy, PolicySet, Verdict

log = get_logger(__name__)

MAX_RETRY_DELAY = 300.0
DEFERRED_RETRY = 30.0  # seconds before a failure deferred for an unknown GitLab version is retried
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
    action: str  # posted | unchanged | not_reportable | deferred | stale
    policy: Policy
    trigger: str
    at: dt.datetime
    # GitLab showed a verdict for this SHA that the bot never posted (someone set it by hand).
    tampered: bool = False


DecisionListener = Callable[[Decision], Awaitable[None] | None]
# Called once per completed evaluation with all its decisions (e.g. one sticky note per MR).
EvaluationListener = Callable[[MRKey, MergeRequestFacts, list[Decision]], Awaitable[None] | None]


def status_shown(verdict: Verdict, gitlab_status: str) -> bool:
    """Whether GitLab already shows this verdict (14.x shows `approved` for a passed check)."""
    if verdict.status == "passed":
        return gitlab_status in ("passed", "approved")
    return gitlab_status == "failed"


def action_for(verdict: Verdict, gitlab_status: str, reports_failures: bool | None) -> str:
    """What to do about one verdict. `reports_failures` is None while GitLab's version is
    unknown: a failure then waits, because GitLab 14.x would read any POST as an approval."""
    if status_shown(verdict, gitlab_status):
        return "unchanged"
    if verdict.status == "failed" and reports_failures is False:
        return "not_reportable"
    if verdict.status == "failed" and reports_failures is None:
        return "deferred"
    return "posted"


def reports_failures(gitlab: GitLab, listed: Sequence[dict[str, Any]]) -> bool | None:
    """Whether GitLab can show a failed check: known from its version, or inferred from a
    listed `approved` (only 14.x says that); None when neither tells."""
    if gitlab.detected_version is not None:
        return gitlab.reports_failures
    if any(check.get("status") == "approved" for check in listed):
        return False
    return None


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


def judge(policy: Policy, facts: MergeRequestFacts) -> Verdict:
    """`evaluate`, except that a policy needing a fact GitLab refused to give fails with what
    GitLab said, instead of the check staying pending (DESIGN principle 5)."""
    refused = [name for name in policy.needs.describe() if name in facts.unreadable]
    if not refused:
        try:
            return evaluate(policy, facts)
        except MissingFactError as exc:  # a fetching bug: say so rather than stay pending
            log.error("missing_fact", check=policy.check, error=str(exc))
            return _cannot_judge(policy, f"cannot judge: {exc}")
    reason = "; ".join(f"cannot read {name}: {facts.unreadable[name]}" for name in refused)
    return _cannot_judge(policy, reason)


def _cannot_judge(policy: Policy, reason: str) -> Verdict:
    advisory = policy.mode == "advisory"
    fix = "let the bot's token read this (see the reason), then comment /recheck"
    outcome = Outcome(policy.check, False, reason, fix=fix)
    return Verdict(
        policy.check,
        "passed" if advisory else "failed",
        f"advisory: would fail: {reason}" if advisory else reason,
        advisory=advisory,
        outcome=outcome,
    )


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
        last_posted: Callable[[MRKey, str], Awaitable[tuple[str, str] | None]] | None = None,
    ) -> None:
        self.gitlab = gitlab
        self.policies = policies
        self.submit = submit
        self.groups = groups or GroupDirectory(gitlab)
        self.clock = clock
        self.listeners: list[DecisionListener] = []
        self.retry_base = 5.0  # seconds before re-evaluating after a transient GitLab failure
        self.deferred_retry = DEFERRED_RETRY
        self.version_retry = 10.0  # at most this often an evaluation asks an unknown version
        self._version_asked = time.monotonic()  # start-up has just asked
        self.evaluation_listeners: list[EvaluationListener] = []
        self._known_checks: dict[int, frozenset[str]] = {}
        self._failures: dict[MRKey, int] = {}
        self._warned: set[tuple[int, int | None, str]] = set()
        # What this process last posted per (MR, check): (sha, status). Bounded, oldest dropped.
        self._posted: dict[tuple[MRKey, str], tuple[str, str]] = {}
        # Before a restart: what the decision record says the bot posted.
        self.last_posted = last_posted
        # Consecutive 409s per MR: the first re-evaluation is immediate, later ones back off.
        self._head_moves: dict[MRKey, int] = {}

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
        if (
            self.gitlab.detected_version is None
            and time.monotonic() - self._version_asked > self.version_retry
        ):
            self._version_asked = time.monotonic()
            await self.gitlab.detect_version()  # how failures are reported depends on it
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
        decisions = await self._decide(key, facts, matched, trigger, listed)
        if decisions is None:
            # The head moved under us: look again at once, and back off if it keeps happening
            # (an inconsistent MR must not burn the rate limit in a tight loop).
            moves = self._head_moves.get(key, 0) + 1
            self._head_moves[key] = moves
            if len(self._head_moves) > POSTED_MEMORY:
                del self._head_moves[next(iter(self._head_moves))]
            return 0.0 if moves == 1 else min(MAX_RETRY_DELAY, 0.5 * 2 ** (moves - 2))
        self._head_moves.pop(key, None)
        await self._notify_evaluation(key, facts, decisions)
        delays = [
            max(1.0, (d.verdict.wake_at - facts.now).total_seconds() + 1.0)
            for d in decisions
            if d.verdict.wake_at is not None
        ]
        if any(d.action == "deferred" for d in decisions):
            delays.append(self.deferred_retry)
        return min(delays) if delays else None

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
        listed: Sequence[dict[str, Any]],
    ) -> list[Decision] | None:
        can_fail = reports_failures(self.gitlab, listed)
        decisions: list[Decision] = []
        posts: list[tuple[Decision, Awaitable[None]]] = []
        for check, policy in matched:
            verdict = judge(policy, facts)
            shown = str(check.get("status") or "pending")
            action = action_for(verdict, shown, can_fail)
            tampered = action == "posted" and await self._looks_forged(
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

    async def _looks_forged(self, key: MRKey, check: str, sha: str, shown: str) -> bool:
        """GitLab shows a verdict for this SHA that differs from what the bot posted for it, or
        a `passed` the bot never posted. What was posted before a restart comes from the
        decision record."""
        if shown not in ("passed", "failed", "approved"):
            return False
        last = self._posted.get((key, check))
        if last is None and self.last_posted is not None:
            try:
                last = await self.last_posted(key, check)
            except Exception as exc:  # the record logs its own failure (one line, once)
                log.debug("decision_record_unreadable", error=f"{type(exc).__name__}: {exc}")
        if last is None or last[0] != sha:
            # Nothing posted for this SHA. A `failed` is no sign of tampering: GitLab 16.6+
            # turns a check left pending into `failed` by itself.
            return shown in ("passed", "approved")
        posted = last[1]
        if posted == "passed" and shown == "approved":
            return False
        return posted != shown

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
            policy_digest=decision.policy.digest[:12],
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

"""One evaluation: read the MR, judge every listed check that has a policy, post what differs.

Every fact a verdict uses belongs to the SHA it is posted for. The MR read says which head that
is; a fact read that was answered before the MR read might describe the previous head (a push
landing while the reads run), so optional facts are read after the MR read (a second round),
except when this process already saw the same head before the round began: then one concurrent
round suffices. The POST itself is the last guard: GitLab answers 409 when the head moved, and
reads bound to a SHA (GraphQL diffStats, the newest diff version) raise HeadMoved; both make the
MR be looked at again, never judged for the old SHA. A verdict is posted only where GitLab shows
something else (README, "How it decides").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from bot.gitlab import compat
from bot.gitlab.client import GitLab, GitLabError
from bot.gitlab.snapshot import HeadMoved, Shown, SnapshotReader, StatusCheck
from bot.keys import BranchKey, Hint, MRKey, PushKey
from bot.logs import get_logger
from bot.policy.evaluate import applies, judge, needs_of
from bot.policy.explanation import explanation
from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import Policy, PolicySet, Verdict

if TYPE_CHECKING:
    from bot.service.preview import PolicyMRs
    from bot.service.repository import RepositoryPolicies

log = get_logger(__name__)

MAX_RETRY_DELAY = 300.0
# Seconds before a failure deferred for an unknown GitLab version is looked at again, at most:
# sooner when the version may be asked again sooner.
DEFERRED_RETRY = 30.0
# GitLab ends a Rails request after GITLAB_RAILS_RACK_TIMEOUT, 60 s by default (rack-timeout
# since GitLab's move to Puma): a write the client gave up on is applied by then or never.
UNCERTAIN_RECHECK = 65.0
POSTED_MEMORY = 100_000


# What was done about a verdict: posted to GitLab; unchanged (GitLab shows it already);
# not_reportable (GitLab 14.x cannot show a failure); deferred (a failure waits until GitLab's
# version is known); stale (the head moved before the post landed).
Action = Literal["posted", "unchanged", "not_reportable", "deferred", "stale"]


@dataclass(frozen=True)
class Decision:
    """One verdict for one check of one MR at one SHA, and what was done about it."""

    key: MRKey
    project_path: str
    sha: str
    check: str
    check_id: int
    verdict: Verdict
    gitlab_status: Shown
    action: Action
    policy: Policy
    trigger: str
    at: dt.datetime
    # GitLab showed a verdict for this SHA that the bot never posted (someone set it by hand).
    tampered: bool = False


DecisionListener = Callable[[Decision], Awaitable[None] | None]
# Called once per completed evaluation with all its decisions (e.g. one sticky note per MR).
EvaluationListener = Callable[[MRKey, MergeRequestFacts, list[Decision]], Awaitable[None] | None]


def status_shown(verdict: Verdict, gitlab_status: Shown) -> bool:
    """Whether GitLab already shows this verdict (14.x shows `approved` for a passed check)."""
    if verdict.status == "passed":
        return gitlab_status in ("passed", "approved")
    return gitlab_status == "failed"


def action_for(verdict: Verdict, gitlab_status: Shown, reports_failures: bool | None) -> Action:
    """What to do about one verdict. `reports_failures` is None while GitLab's version is
    unknown: a failure then waits, because GitLab 14.x would read any POST as an approval."""
    if status_shown(verdict, gitlab_status):
        return "unchanged"
    if verdict.status == "failed" and reports_failures is False:
        return "not_reportable"
    if verdict.status == "failed" and reports_failures is None:
        return "deferred"
    return "posted"


def reports_failures(
    gitlab: GitLab, listed: Sequence[StatusCheck], mr: Mapping[str, Any] | None = None
) -> bool | None:
    """Whether GitLab can show a failed check: known from its version, or learned from what
    GitLab's answers show (compat.failures_shown_by; kept by the client for every later
    evaluation); None when nothing tells yet."""
    if gitlab.detected_version is None:
        shown = compat.failures_shown_by((check.status for check in listed), mr)
        if shown is not None:
            gitlab.learn_reports_failures(*shown)
    return gitlab.known_reports_failures


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


class Evaluator:
    """The queue's handler: one call per MR key (or branch key) taken off the queue."""

    def __init__(
        self,
        gitlab: GitLab,
        policies: Callable[[], PolicySet],
        *,
        submit: Callable[[MRKey, Hint], Any],
        reader: SnapshotReader | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        last_posted: Callable[[MRKey, str], Awaitable[tuple[str, str] | None]] | None = None,
        repository: RepositoryPolicies | None = None,
        policy_mrs: PolicyMRs | None = None,
        announce_push: Callable[[int, str], Awaitable[None]] | None = None,
        shared_record: bool = False,
    ) -> None:
        self.gitlab = gitlab
        # A fleet: tells every replica a branch moved (each caches repository policies); None:
        # one process, whose own cache is all there is.
        self.announce_push = announce_push
        # The policies projects keep in their target branches; None: central policies only.
        self.repository = repository
        # Judges `status-check-policies` (MRs changing the repository's policies); None: off.
        self.policy_mrs = policy_mrs
        self.policies = policies
        self.submit = submit
        self.reader = reader or SnapshotReader(gitlab)
        self.clock = clock
        self.listeners: list[DecisionListener] = []
        self.retry_base = 5.0  # seconds before re-evaluating after a transient GitLab failure
        # After a status POST with an attempt given up on, look at GitLab's list again once
        # GitLab must have finished that request (its Rails requests time out at 60 s).
        self.uncertain_recheck = UNCERTAIN_RECHECK
        self._uncertain: dict[MRKey, float] = {}  # MR -> when to look again (monotonic)
        self.deferred_retry = DEFERRED_RETRY
        # MRs whose failure waits for GitLab's version: re-queued as soon as it is known.
        self._deferred: set[MRKey] = set()
        self.evaluation_listeners: list[EvaluationListener] = []
        self._known_checks: dict[int, frozenset[str]] = {}
        self._failures: dict[MRKey, int] = {}
        self._warned: set[tuple[int, int | None, str]] = set()
        # What this process last posted per (MR, check): (sha, status). Bounded, oldest dropped.
        self._posted: dict[tuple[MRKey, str], tuple[str, str]] = {}
        # Before a restart: what the decision record says the bot posted.
        self.last_posted = last_posted
        # A fleet (DATABASE_URL): the record is shared, and what another replica posted is in
        # it, not in this process's `_posted`; so the record is asked first.
        self.shared_record = shared_record
        # Consecutive 409s per MR: the first re-evaluation is immediate, later ones back off.
        self._head_moves: dict[MRKey, int] = {}

    # -- the queue's entry point --------------------------------------------------------------

    async def __call__(self, key: MRKey | BranchKey, hint: Hint | None) -> float | None:
        try:
            if isinstance(key, PushKey):
                await self._on_push(key)
                return None
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

    async def _on_push(self, key: PushKey) -> None:
        """A branch moved: forget its head, and when the policies it holds changed, judge the
        open MRs that target it again (the push itself is a hint: GitLab says what changed)."""
        if self.repository is None:
            return
        before = self.repository.known_layer(key.project_id, key.branch)
        if self.announce_push is not None:
            await self.announce_push(key.project_id, key.branch)
        elif not self.repository.has_read(key.project_id, key.branch):
            # Nothing judged here used that branch's policies: the next evaluation of an MR
            # targeting it reads them anyway (and the start-up sweep covers a restart). In a
            # fleet another replica may have judged by them, so the branch is read.
            return
        self.repository.forget_branch(key.project_id, key.branch)
        after = await self.repository.for_target(key.project_id, key.branch)
        if after.layer is not None and before is not None:
            if after.layer.digest == before.digest:
                log.debug("push_policies_unchanged", project_id=key.project_id, branch=key.branch)
                return
        elif after.layer is not None and not after.layer.checks:
            return  # no repository policies there, before or now (as far as the bot knew)
        merge_requests = await self.gitlab.merge_requests_for_target(key.project_id, key.branch)
        log.info(
            "repository_policies_changed",
            project_id=key.project_id,
            branch=key.branch,
            merge_requests=len(merge_requests),
        )
        for mr in merge_requests:
            project_id = int(mr.get("project_id", key.project_id))
            self.submit(
                MRKey(project_id, int(mr["iid"])),
                Hint(trigger="push:policies", target_branch=key.branch),
            )

    # -- one evaluation ---------------------------------------------------------------------

    async def evaluate(self, key: MRKey, hint: Hint | None = None) -> float | None:
        central = policy_set = self.policies()
        trigger = hint.trigger if hint else "sweep"
        if not policy_set.policies and self.repository is None:
            log.warning("no_policies", key=str(key))
            return None
        matched: list[tuple[StatusCheck, Policy]] = []

        async def needs_for(facts: MergeRequestFacts, checks: Sequence[StatusCheck]) -> FactNeeds:
            """Match the listed checks to policies (the target branch's repository policies
            over the central ones); read what the applicable ones need."""
            nonlocal policy_set
            self._known_checks[key.project_id] = frozenset(c.name for c in checks)
            if self.repository is not None and facts.target_branch:
                target = await self.repository.for_target(key.project_id, facts.target_branch)
                policy_set = target.apply(central, (c.name for c in checks), facts.now)
            matched[:] = [(c, p) for c in checks if (p := policy_set.get(c.name)) is not None]
            return needs_of([policy for _, policy in matched if applies(policy, facts)])

        try:
            snapshot, _ = await asyncio.gather(
                self.reader.read(
                    key.project_id,
                    key.iid,
                    needs_for,
                    guess=self._prefetch_needs(policy_set, key, hint),
                    hint_sha=hint.sha if hint else None,
                    project_path=hint.project_path if hint else None,
                    now=self.clock(),
                ),
                # How failures are reported depends on the version: while it is unknown, ask
                # again when it is time (alongside the reads, so no evaluation waits for it).
                self.gitlab.refresh_version(),
            )
        except HeadMoved as moved:
            log.info("head_moved", project_id=key.project_id, mr=key.iid, reason=str(moved))
            return self._look_again(key)
        facts, listed, mr = snapshot.facts, snapshot.checks, snapshot.mr
        log_ctx = {"project": facts.project_path, "mr": key.iid, "sha": facts.sha}
        if facts.state != "opened":
            log.info("skipped", reason=f"merge request is {facts.state}", **log_ctx)
            return None
        await self._match_policy_check(facts, listed, mr, policy_set, matched)
        unmatched = [c.name for c in listed if policy_set.get(c.name) is None]
        if unmatched:
            log.info("checks_without_policy", checks=unmatched, **log_ctx)
        if not matched:
            log.info("no_matching_checks", listed=len(listed), **log_ctx)
            return None
        decisions = await self._decide(key, facts, matched, trigger, listed, mr)
        if decisions is None:
            # The head moved under us: look again at once, and back off if it keeps happening
            # (an inconsistent MR must not burn the rate limit in a tight loop).
            return self._look_again(key)
        self._head_moves.pop(key, None)
        await self._notify_evaluation(key, facts, decisions)
        delays = [
            max(1.0, (d.verdict.wake_at - facts.now).total_seconds() + 1.0)
            for d in decisions
            if d.verdict.wake_at is not None
        ]
        if any(d.action == "deferred" for d in decisions):
            self._deferred.add(key)
            soon = self.gitlab.version_retry_in() + 0.5
            delays.append(max(1.0, min(self.deferred_retry, soon)))
        else:
            self._deferred.discard(key)
        recheck_at = self._uncertain.get(key)
        if recheck_at is not None:
            # Every evaluation until then keeps the look-again (a later one replaces the
            # queue's timer); the first one after it read GitLab's list afresh.
            if time.monotonic() >= recheck_at:
                del self._uncertain[key]
            else:
                delays.append(recheck_at - time.monotonic())
        self.release_deferred()
        return min(delays) if delays else None

    async def _match_policy_check(
        self,
        facts: MergeRequestFacts,
        listed: Sequence[StatusCheck],
        mr: Mapping[str, Any],
        policy_set: PolicySet,
        matched: list[tuple[StatusCheck, Policy]],
    ) -> None:
        """`status-check-policies`, when GitLab lists it and no policy file claims the name:
        the MR's proposed repository policies validated, tested and previewed."""
        if self.policy_mrs is None or policy_set.get(self.policy_mrs.check) is not None:
            return
        check = next((c for c in listed if c.name == self.policy_mrs.check), None)
        if check is not None:
            matched.append((check, await self.policy_mrs.policy_for(facts, mr)))

    def _look_again(self, key: MRKey) -> float:
        moves = self._head_moves.get(key, 0) + 1
        self._head_moves[key] = moves
        if len(self._head_moves) > POSTED_MEMORY:
            del self._head_moves[next(iter(self._head_moves))]
        return 0.0 if moves == 1 else min(MAX_RETRY_DELAY, 0.5 * 2 ** (moves - 2))

    def release_deferred(self) -> None:
        """Once GitLab's version (or what it implies) is known, look again at once at every MR
        whose failure waited for it."""
        if not self._deferred or self.gitlab.known_reports_failures is None:
            return
        waiting, self._deferred = self._deferred, set()
        evidence = self.gitlab.learned_from if self.gitlab.detected_version is None else "/version"
        log.info("deferred_released", merge_requests=len(waiting), evidence=evidence)
        for key in waiting:
            self.submit(key, Hint(trigger="version"))

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
        matched: list[tuple[StatusCheck, Policy]],
        trigger: str,
        listed: Sequence[StatusCheck],
        mr: Mapping[str, Any] | None = None,
    ) -> list[Decision] | None:
        can_fail = reports_failures(self.gitlab, listed, mr)
        verdicts = [(check, policy, judge(policy, facts)) for check, policy in matched]
        if can_fail is None and any(
            action_for(verdict, check.status, None) == "deferred" for check, _, verdict in verdicts
        ):
            # A failure would wait for the version: ask GitLab in a way that stores nothing.
            check_id = verdicts[0][0].id
            await self.gitlab.reports_failures_probe(key.project_id, key.iid, check_id)
            can_fail = self.gitlab.known_reports_failures
        decisions: list[Decision] = []
        posts: list[tuple[Decision, Awaitable[bool]]] = []
        for check, policy, verdict in verdicts:
            shown = check.status
            action = action_for(verdict, shown, can_fail)
            tampered = action == "posted" and await self._looks_forged(
                key, policy.check, facts.sha, shown
            )
            decision = Decision(
                key=key,
                project_path=facts.project_path,
                sha=facts.sha,
                check=policy.check,
                check_id=check.id,
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
            elif isinstance(error, GitLabError):
                errors.append(error)
                continue
            elif isinstance(error, BaseException):
                # A bug of ours while posting is no "GitLab unavailable": let the queue log it
                # with its traceback (evaluation_crashed) instead of retrying it as GitLab's.
                raise error
            elif decision.action == "posted":
                self._remember_post(decision)
                if error is True:  # post_status: an attempt was given up on
                    self._uncertain[key] = time.monotonic() + self.uncertain_recheck
                    log.info("status_post_uncertain", project=facts.project_path, mr=key.iid)
            await self._announce(decision)
        if head_moved:
            log.info("head_moved", project=facts.project_path, mr=key.iid, sha=facts.sha)
            return None
        if errors:
            raise errors[0]
        return decisions

    async def _looks_forged(self, key: MRKey, check: str, sha: str, shown: Shown) -> bool:
        """GitLab shows a verdict for this SHA that differs from what the bot posted for it, or
        a `passed` the bot never posted. What was posted before a restart comes from the
        decision record; in a fleet (a shared record) the record comes first, since the last
        post may be another replica's, and this process's memory only stands in when the record
        cannot be read or has no post yet."""
        if shown not in ("passed", "failed", "approved"):
            return False
        mine = self._posted.get((key, check))
        last = None if self.shared_record else mine
        if last is None and self.last_posted is not None:
            try:
                last = await self.last_posted(key, check)
            except Exception as exc:  # the record logs its own failure (one line, once)
                log.debug("decision_record_unreadable", error=f"{type(exc).__name__}: {exc}")
        if last is None:
            last = mine
        if last is None or last[0] != sha:
            # Nothing posted for this SHA. A `failed` is no sign of tampering: GitLab 16.6+
            # turns the pending row it stored at MR creation (or on Retry) into `failed`.
            return shown in ("passed", "approved")
        posted = last[1]
        if posted == "passed" and shown == "approved":
            return False
        return posted != shown

    def _remember_post(self, decision: Decision) -> None:
        status: Shown = decision.verdict.status
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
            fixes=list(explanation(verdict).fixes),
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

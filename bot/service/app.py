"""The aiohttp application: routes plus cleanup contexts that own every long-lived resource.

`create_app(settings)` is the only way the service is built, in production and in tests, so what
the tests run is what users run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.gitlab.client import GitLab, GitLabError
from bot.gitlab.snapshot import FactReader, SnapshotReader
from bot.keys import BranchKey, Hint, MRKey
from bot.logs import get_logger
from bot.policy.evaluate import needs_of
from bot.service.database import BRANCH_CHANNEL, DB_ERRORS, Database
from bot.service.decide import Decision, Evaluator
from bot.service.details import LINK_KEY, Sources, links_ctx
from bot.service.details import add_routes as add_details_routes
from bot.service.intake import (
    Accepted,
    OffLoopInterpreter,
    make_webhook_handler,
    webhook_method_not_allowed,
)
from bot.service.leader import SweepLeader
from bot.service.metrics import Metrics
from bot.service.pgqueue import PgQueue, WorkCodec
from bot.service.pgrecord import PgRecord, link_key
from bot.service.policy_store import PolicyStore
from bot.service.preview import PolicyMRs
from bot.service.queue import CoalescingQueue
from bot.service.record import DecisionRecord
from bot.service.references import unreadable
from bot.service.repository import RepositoryPolicies
from bot.service.sticky import StickyNotes, details_links
from bot.service.sweep import BASE_REQUESTS_PER_EVALUATION, Sweeper

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
POLICIES = web.AppKey("policies", PolicyStore)
GITLAB = web.AppKey("gitlab", GitLab)
QUEUE: web.AppKey[CoalescingQueue[Any] | PgQueue[Any]] = web.AppKey("queue")
EVALUATOR = web.AppKey("evaluator", Evaluator)
VERSION_RETRY = web.AppKey("version_retry", asyncio.Task)
SWEEPER = web.AppKey("sweeper", Sweeper)
RECORD: web.AppKey[DecisionRecord | PgRecord] = web.AppKey("record")
DATABASE = web.AppKey("database", Database)
LEADER = web.AppKey("leader", SweepLeader)
# Set on SIGTERM: /readyz says "draining" for DRAIN_DELAY seconds before the listener closes.
DRAINING = web.AppKey("draining", list)
METRICS = web.AppKey("metrics", Metrics)
STICKY = web.AppKey("sticky", StickyNotes)

STOP_WAIT = 3.0  # seconds a cancelled background task gets to end at shutdown
READY_PROBE_AGE = 30.0  # /readyz causes at most one GitLab call per this many seconds
READY_PROBE_WAIT = 3.0  # seconds /readyz waits for that call


class GitLabReadiness:
    """What /readyz says about GitLab, at the cost of at most one GitLab call per
    READY_PROBE_AGE seconds whatever the probe rate (the endpoint is unauthenticated).

    A real call that succeeded in the last READY_PROBE_AGE seconds (and no unreachable one since)
    vouches for GitLab without a call. Otherwise one `GET /version` is made, never retried, by a
    single probe that every concurrent /readyz shares, and its answer is kept for
    READY_PROBE_AGE seconds. A 401 says the token is rejected; no answer says unreachable."""

    def __init__(
        self,
        gitlab: GitLab,
        probe_client: GitLab,
        *,
        interval: float = READY_PROBE_AGE,
        wait: float = READY_PROBE_WAIT,
    ) -> None:
        self.gitlab = gitlab
        self.probe_client = probe_client
        self.interval = interval
        self.wait = wait
        self._probe: asyncio.Task[str | None] | None = None
        self._probed_at = -float("inf")
        self._problem: str | None = None

    async def problem(self) -> str | None:
        now = time.monotonic()
        gitlab = self.gitlab
        if gitlab.reachable is not False and now - gitlab.last_contact <= self.interval:
            return None
        if self._probe is None:
            if now - self._probed_at < self.interval:
                return self._problem
            self._probed_at = now
            self._probe = asyncio.create_task(self._run(), name="readyz-gitlab-probe")
        try:
            async with asyncio.timeout(self.wait):
                return await asyncio.shield(self._probe)
        except TimeoutError:
            return f"GitLab did not answer GET /version within {self.wait:g} s"

    async def _run(self) -> str | None:
        try:
            await self.probe_client.get("/version")
            problem = None
        except GitLabError as exc:
            problem = describe_gitlab_problem(exc)
        except Exception as exc:  # never let a probe crash: say what happened
            problem = f"GitLab could not be probed: {type(exc).__name__}"
        self._problem = problem
        self._probe = None
        return problem

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


READINESS = web.AppKey("readiness", GitLabReadiness)


def describe_gitlab_problem(exc: GitLabError) -> str:
    """/readyz's words for a failed GitLab call: a rejected token is not an outage."""
    if exc.status == 401:
        return (
            "GitLab rejects the token (401 on GET /version): GITLAB_TOKEN is wrong, expired "
            "or revoked"
        )
    if exc.status is None:
        return f"GitLab is unreachable: {exc.message}"
    return f"GitLab is unreachable: it answers {exc.status} ({exc.message})"


async def _gitlab_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.gitlab_timeout)
    connector = aiohttp.TCPConnector(limit=settings.gitlab_concurrency * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        gitlab = GitLab.from_settings(session, settings, on_response=app[METRICS].gitlab_response)
        app[GITLAB] = gitlab
        probe_client = GitLab.from_settings(
            session, settings, max_attempts=1, on_response=app[METRICS].gitlab_response
        )
        app[READINESS] = readiness = GitLabReadiness(gitlab, probe_client)
        if await gitlab.detect_version() is None:
            app[VERSION_RETRY] = asyncio.create_task(_retry_version(app, gitlab))
        check = asyncio.create_task(_warn_unreadable_references(gitlab, app[POLICIES]))
        yield
        check.cancel()
        await readiness.close()
        task = app.get(VERSION_RETRY)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(asyncio.CancelledError):
            await check


async def _warn_unreadable_references(gitlab: GitLab, store: PolicyStore) -> None:
    """At start-up, name every group or user the policies mention that GitLab cannot show:
    rules consulting them would stay undecided (failed) until that is fixed."""
    try:
        problems = await unreadable(gitlab, store.current.policies)
    except Exception:  # a warning must never stop the service
        log.exception("policy_references_unchecked")
        return
    for problem in problems:
        log.warning("policy_reference_unreadable", problem=problem)


async def _retry_version(app: web.Application, gitlab: GitLab) -> None:
    """Keep asking until GitLab says its version (it decides how failures are reported): soon
    after a failure, never before GitLab's Retry-After (GitLab.detect_version schedules it);
    then look again at once at the MRs whose failure waited for it."""
    while gitlab.detected_version is None:
        await asyncio.sleep(max(0.1, gitlab.version_retry_in()))
        await gitlab.refresh_version()
    evaluator = app.get(EVALUATOR)
    if evaluator is not None:
        evaluator.release_deferred()


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL (DATABASE_URL), connected and migrated before anything uses it; raises
    DatabaseError (one line) if it cannot be used. Without DATABASE_URL: nothing."""
    settings = app[SETTINGS]
    if settings.database_url is None:
        yield
        return
    db = Database(settings.database_url, pool_size=settings.workers + 6)
    await db.open()
    app[DATABASE] = db
    yield
    await db.close()


async def _record_ctx(app: web.Application) -> AsyncIterator[None]:
    """The decision record in STATE_DIR (or PostgreSQL), open before the workers start and closed
    (flushed) after they stop. A bad STATE_DIR raises StateError here, before any traffic is
    accepted."""
    settings = app[SETTINGS]
    db = app.get(DATABASE)
    if db is not None:
        pg = PgRecord(db, retention_days=settings.record_retention_days)
        await pg.start()
        app[RECORD] = pg
        app[METRICS].watch_record(pg)
        yield
        await pg.close()
        return
    record = await asyncio.to_thread(
        DecisionRecord.open, settings.state_dir, retention_days=settings.record_retention_days
    )
    app[RECORD] = record
    app[METRICS].watch_record(record)
    yield
    await record.close()


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[POLICIES]
    handler = app[METRICS].timed(lambda key, hint: evaluator(key, hint))
    db = app.get(DATABASE)
    queue: CoalescingQueue[MRKey | BranchKey] | PgQueue[MRKey | BranchKey]
    if db is not None:
        queue = PgQueue(
            handler,
            db,
            workers=settings.workers,
            min_interval=settings.evaluation_spacing,
            codec=WorkCodec(),
        )
    else:
        queue = CoalescingQueue(
            handler, workers=settings.workers, min_interval=settings.evaluation_spacing
        )
    record = app[RECORD]
    repository = (
        RepositoryPolicies(app[GITLAB], ttl=settings.repository_policy_ttl)
        if settings.repository_policies
        else None
    )
    evaluator = Evaluator(
        app[GITLAB],
        lambda: store.current,
        submit=queue.submit,
        reader=SnapshotReader(
            app[GITLAB], FactReader(app[GITLAB], settle_seconds=settings.approval_settle_seconds)
        ),
        last_posted=lambda key, check: record.last_posted(key.project_id, key.iid, check),
        shared_record=db is not None,
        repository=repository,
        announce_push=(
            share_branch_moves(db, repository) if db is not None and repository else None
        ),
        policy_mrs=(
            PolicyMRs(
                app[GITLAB],
                repository,
                SnapshotReader(app[GITLAB]),
                lambda: store.current,
                budget=settings.sweep_budget,
            )
            if repository is not None
            else None
        ),
    )
    app[QUEUE] = queue
    app[EVALUATOR] = evaluator
    _observe(app, queue, evaluator)
    evaluator.listeners.append(record.record)
    evaluator.evaluation_listeners.append(
        lambda key, facts, decisions: record.remember_project(facts.project_id, facts.project_path)
    )
    queue.start()
    yield
    left = await queue.stop(deadline=settings.shutdown_deadline)
    log.info("workers_stopped", abandoned=left)


def share_branch_moves(
    db: Database, repository: RepositoryPolicies
) -> Callable[[int, str], Awaitable[None]]:
    """Each replica caches target branches' heads for repository policies: a push taken by
    one is told to all (NOTIFY), so none judges by the old policies until its TTL runs out.
    A listener that reconnected may have missed some, so it forgets every head."""

    def moved(payload: str) -> None:
        if not payload:
            repository.forget_heads()
            return
        with contextlib.suppress(ValueError, TypeError):
            project, branch = json.loads(payload)
            repository.forget_branch(int(project), str(branch))

    db.on_notify(moved, channel=BRANCH_CHANNEL)

    async def announce(project: int, branch: str) -> None:
        try:
            await db.notify(BRANCH_CHANNEL, json.dumps([project, branch]))
        except DB_ERRORS as exc:  # the others' TTL is the safety net
            log.warning("branch_move_not_shared", project_id=project, branch=branch, error=str(exc))

    return announce


def _observe(
    app: web.Application,
    queue: CoalescingQueue[MRKey | BranchKey] | PgQueue[MRKey | BranchKey],
    evaluator: Evaluator,
) -> None:
    """Metrics read the queue and count verdicts; the sticky MR note follows each evaluation."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    metrics.watch_queue(lambda: queue.depth, lambda: queue.running, lambda: queue.scheduled)
    evaluator.listeners.append(metrics.verdict)
    sticky = StickyNotes(
        app[GITLAB],
        link_for=details_links(settings, app.get(LINK_KEY)),
        link_ttl=settings.link_ttl,
        on_write=metrics.note_written,
    )
    app[STICKY] = sticky
    evaluator.evaluation_listeners.append(sticky)


async def _sweep_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reconcile at start-up and every RECONCILE_INTERVAL (README, "Never stale, never lost")."""
    settings = app[SETTINGS]
    store = app[POLICIES]
    sweeper = Sweeper(
        app[GITLAB],
        app[QUEUE],
        configured=settings.projects,
        remembered=app[RECORD].known_projects,
        unconfirmed=app[RECORD].unconfirmed_projects,
        forget=app[RECORD].forget_project,
        drop_unconfirmed=app[RECORD].drop_unconfirmed,
        budget=settings.sweep_budget,
        on_finished=lambda report: app[METRICS].sweep_finished(
            report.duration, report.repaired, report.tampered
        ),
        requests_per_evaluation=lambda: (
            BASE_REQUESTS_PER_EVALUATION + len(needs_of(store.current.policies).describe())
        ),
    )
    app[SWEEPER] = sweeper
    if sweeper.budget < settings.sweep_budget:
        log.info(
            "sweep_budget_capped",
            sweep_budget=settings.sweep_budget,
            gitlab_rate_limit=settings.gitlab_rate_limit,
            reason="the sweep never spends more than GITLAB_RATE_LIMIT, the budget of all calls",
        )

    def count_repairs(decision: Decision) -> None:
        if decision.trigger == "sweep" and decision.action == "posted":
            sweeper.count_repair(tampered=decision.tampered)

    app[EVALUATOR].listeners.append(count_repairs)
    db = app.get(DATABASE)
    if db is not None:  # one sweep per interval for the fleet: its leader's
        app[LEADER] = leader = SweepLeader(db, sweeper, settings.reconcile_interval)
        task = asyncio.create_task(leader.run_forever(), name="sweep-leader")
    else:
        task = asyncio.create_task(sweeper.run_forever(settings.reconcile_interval), name="sweep")
    yield
    task.cancel()
    # Bounded: the leader handing its lease back (at most 1 s) must not hold up the stop.
    done, _ = await asyncio.wait({task}, timeout=STOP_WAIT)
    if not done:
        log.warning("sweep_did_not_stop", waited=STOP_WAIT)


async def _policy_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[POLICIES]
    settings = app[SETTINGS]
    watcher = asyncio.create_task(store.watch(settings.policy_poll_interval))
    loop = asyncio.get_running_loop()
    hup = False
    if settings.handle_signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, store.request_reload)
            hup = True
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _shared_links_ctx(app: web.Application) -> AsyncIterator[None]:
    """DATABASE_URL: one link key for the fleet (LINK_SECRET, else the first replica's, kept in
    PostgreSQL), so a link any replica signed opens on every other."""
    settings = app[SETTINGS]
    if settings.link_secret:
        app[LINK_KEY] = settings.link_secret.encode()
    else:
        app[LINK_KEY] = await link_key(app[DATABASE], lambda: secrets.token_bytes(32))
    yield


async def _drain_ctx(app: web.Application) -> AsyncIterator[None]:
    """On SIGTERM, say "not ready" for DRAIN_DELAY seconds while still serving, so the load
    balancer stops sending before the listener closes (README "Running more than one")."""
    settings = app[SETTINGS]
    app[DRAINING] = []
    loop = asyncio.get_running_loop()
    installed = False
    if settings.handle_signals and settings.drain_delay > 0:

        def drain() -> None:
            if app[DRAINING]:
                return
            app[DRAINING].append(True)
            log.info("draining", seconds=settings.drain_delay)
            loop.call_later(settings.drain_delay, _graceful_exit)

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, drain)
            installed = True
    yield
    if installed:
        loop.remove_signal_handler(signal.SIGTERM)


def _graceful_exit() -> None:
    """What aiohttp's own SIGTERM handler does: stop web.run_app gracefully."""
    raise web.GracefulExit()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when policies are loaded and GitLab answered recently (see GitLabReadiness). In a
    fleet (DATABASE_URL) GitLab trouble is a warning instead: every replica shares one GitLab,
    so it would take them all out of the Service together, while the shared queue keeps what
    they take (README "Running more than one")."""
    store = request.app[POLICIES]
    gitlab = request.app.get(GITLAB)
    readiness = request.app.get(READINESS)
    problems: list[str] = []
    warnings: list[str] = []
    if request.app.get(DRAINING):
        problems.append("draining: this instance is stopping (SIGTERM)")
    if not store.loaded:
        problems.append("policies are not loaded")
    if gitlab is None or readiness is None:
        problems.append("GitLab client not started")
    else:
        gitlab_problem = await readiness.problem()
        if gitlab_problem is not None:
            fleet = request.app.get(DATABASE) is not None
            (warnings if fleet else problems).append(gitlab_problem)
    # Degraded, not unready: the bot still decides correctly, and an unready instance gets no
    # deliveries at all (GitLab disables a hook after 4 failures). Said here, in /metrics and
    # in the logs.
    extra: dict[str, Any] = {}
    if store.broken_since is not None:
        since = _iso(store.broken_since)
        warnings.append(
            f"the policy files on disk are broken since {since}; serving the last good set "
            f"(digest {store.current.digest[:12]})"
        )
        extra["policies_on_disk"] = {"broken_since": since, "problems": store.problems}
    record = request.app.get(RECORD)
    if record is not None and record.failing_since is not None:
        warnings.append(
            f"the decision record fails since {_iso(record.failing_since)}: {record.last_error} "
            "(verdicts are still posted; decisions are not recorded)"
        )
        extra["record"] = {"failing_since": _iso(record.failing_since), "errors": record.errors}
    db = request.app.get(DATABASE)
    db_problem = db.problem() if db is not None else None
    if db_problem is not None:
        # Degraded too: deliveries are held in memory and queued when it answers, which beats
        # a 503 (GitLab does not send a webhook again). README "Running more than one".
        warnings.append(
            f"{db_problem} (deliveries are held in memory until it answers; no evaluation "
            "starts meanwhile)"
        )
        extra["database"] = {"problem": db_problem}
    status = "not ready" if problems else "degraded" if warnings else "ready"
    body: dict[str, Any] = {"status": status, "policies": len(store.current)}
    if problems:
        body["problems"] = problems
    if warnings:
        body["warnings"] = warnings
    body.update(extra)
    return web.json_response(body, status=200 if not problems else 503)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus scrape (text format; OpenMetrics when the scraper asks for it)."""
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_app(settings: Settings, store: PolicyStore | None = None) -> web.Application:
    """Build the service. `store` must already hold loaded policies (serve loads them strictly)."""
    if store is None:
        store = PolicyStore(settings.policy_dir)
        store.load()
    # GitLab never compresses a delivery, so the server never inflates a body: a compressed one
    # is refused by the webhook handler (415) and never expanded, not even to be drained.
    app = web.Application(
        client_max_size=settings.max_body_bytes, handler_args={"auto_decompress": False}
    )
    app[SETTINGS] = settings
    app[POLICIES] = store
    app[METRICS] = metrics = Metrics()
    metrics.watch_policies(store)

    def submit(key: MRKey | BranchKey, hint: Hint) -> bool:
        record = app.get(RECORD)
        if record is not None:
            # Before any evaluation, so a kill -9 right after this delivery still leaves the
            # project to the next start-up sweep; but only as an unconfirmed id (bounded, no
            # path: a delivery may be forged) until GitLab confirms it.
            record.remember_delivered(key.project_id)
        queue = app.get(QUEUE)
        return queue.submit(key, hint) if queue is not None else False

    async def accept(
        delivery_id: str | None, work: list[tuple[MRKey | BranchKey, Hint]]
    ) -> Accepted:
        """DATABASE_URL: commit the delivery to the fleet's queue before answering it."""
        queue = app.get(QUEUE)
        if not isinstance(queue, PgQueue):
            return "unavailable"
        outcome = await queue.enqueue(work, delivery_id)
        record = app.get(RECORD)
        if record is not None and outcome in ("queued", "held"):
            for key, _ in work:
                record.remember_delivered(key.project_id)
        return outcome

    interpreter = OffLoopInterpreter()  # large bodies are parsed in a helper process

    async def stop_interpreter(app: web.Application) -> None:
        await asyncio.to_thread(interpreter.close)

    app.on_cleanup.append(stop_interpreter)
    app.router.add_post(
        "/webhook",
        make_webhook_handler(
            webhook_secret=settings.webhook_secret,
            status_check_secret=settings.status_check_secret,
            submit=submit,
            on_delivery=metrics.delivery,
            max_body_bytes=settings.max_body_bytes,
            interpreter=interpreter,
            accept=accept if settings.database_url else None,
        ),
    )
    app.router.add_route("*", "/webhook", webhook_method_not_allowed)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_details_routes(
        app,
        Sources(
            gitlab=lambda: app.get(GITLAB),
            record=lambda: app.get(RECORD),
            policies=lambda: store.current,
        ),
    )
    app.router.add_get("/metrics", metrics_endpoint)
    # The database first (DATABASE_URL), then the record and the link key, before everything
    # that records.
    links = _shared_links_ctx if settings.database_url else links_ctx(settings)
    app.cleanup_ctx.extend([_database_ctx, _record_ctx, links])
    app.cleanup_ctx.extend([_gitlab_ctx, _workers_ctx, _sweep_ctx, _policy_watch_ctx, _drain_ctx])
    return app

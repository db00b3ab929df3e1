"""Prometheus metrics: what the bot receives, decides, asks GitLab, and how long it takes.

Each app owns its own `CollectorRegistry` (never prometheus-client's global one), so several apps
in one process (the tests) never share or clash. Every label value is bounded: delivery kinds are
GitLab's event names or `other`, GitLab endpoints are URL templates (`/projects/:id/...`, no ids,
query strings or tokens), check names come from the policies.

    metrics = Metrics()
    metrics.delivery("Merge Request Hook", "queued")
    metrics.sweep_finished(1.8, repaired=2, tampered=1)
    body, content_type = metrics.exposition(request.headers.get("Accept"))
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from bot.keys import MRKey

if TYPE_CHECKING:
    from bot.service.decide import Decision

PREFIX = "gitlab_status_bot"

# GitLab's X-Gitlab-Event values (and our name for status-check requests). Anything else a sender
# puts in the header is counted as `other`, so a hostile sender cannot grow the label set.
KNOWN_KINDS = frozenset(
    {
        "Merge Request Hook",
        "Pipeline Hook",
        "Note Hook",
        "System Hook",
        "External Status Check",
        "Push Hook",
        "Tag Push Hook",
        "Issue Hook",
        "Confidential Issue Hook",
        "Confidential Note Hook",
        "Job Hook",
        "Deployment Hook",
        "Release Hook",
        "Wiki Page Hook",
        "Member Hook",
        "Subgroup Hook",
        "Project Hook",
        "Emoji Hook",
        "Feature Flag Hook",
        "Milestone Hook",
        "Resource Access Token Hook",
        "Vulnerability Hook",
    }
)

# A path segment after one of these names is an id (or a path) of that collection.
_ID_AFTER = {
    "projects": ":id",
    "groups": ":id",
    "users": ":user_id",
    "merge_requests": ":iid",
    "notes": ":note_id",
    "discussions": ":discussion_id",
    "status_checks": ":check_id",
    "external_status_checks": ":check_id",
    "hooks": ":hook_id",
    "pipelines": ":pipeline_id",
    "members": ":user_id",
    "protected_branches": ":name",
    "commits": ":sha",
    "jobs": ":job_id",
}
# Literal sub-resources that sit where an id could (`/groups/:id/members/all`).
_LITERALS = frozenset({"all"})
_OPAQUE = re.compile(r"^(\d+|[0-9a-f]{40}|[0-9a-f]{64})$|%")
MAX_ENDPOINTS = 200  # past this, new templates are counted as `other`

EVALUATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SWEEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def endpoint_template(url: str) -> str:
    """`http://gl/api/v4/projects/acme%2Fapp/merge_requests/5/diffs?page=2` →
    `/projects/:id/merge_requests/:iid/diffs`."""
    path = url.split("?", 1)[0].split("#", 1)[0]
    if "/api/v4" in path:
        path = path.split("/api/v4", 1)[1]
    elif "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    segments = [s for s in path.split("/") if s]
    out: list[str] = []
    previous = ""
    for segment in segments:
        if previous in _ID_AFTER and segment not in _LITERALS:
            out.append(_ID_AFTER[previous])
        elif _OPAQUE.search(segment):
            out.append(":id")
        else:
            out.append(segment)
        previous = segment
    return "/" + "/".join(out)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        # A plain mapping (not aiohttp's case-insensitive headers): look for any spelling.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


class Metrics:
    """The app's metrics and the callbacks that feed them (one instance per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Deliveries to POST /webhook by GitLab event kind and outcome "
            "(queued, ignored, duplicate, malformed, unauthorized, too_large, "
            "unsupported_encoding, unavailable).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Merge requests waiting to be evaluated (one entry per MR however many deliveries).",
            registry=registry,
        )
        self.queue_running = Gauge(
            f"{PREFIX}_queue_running",
            "Evaluations running now.",
            registry=registry,
        )
        self.queue_scheduled = Gauge(
            f"{PREFIX}_queue_scheduled",
            "Re-evaluations scheduled for later (retries after GitLab faults, freeze windows).",
            registry=registry,
        )
        self.evaluation_seconds = Histogram(
            f"{PREFIX}_evaluation_duration_seconds",
            "Time to evaluate one merge request: read from GitLab, judge, post, comment. "
            "`outcome` is ok, or error when the evaluation crashed.",
            ["outcome"],
            buckets=EVALUATION_BUCKETS,
            registry=registry,
        )
        self.verdicts = Counter(
            f"{PREFIX}_verdicts",
            "Verdicts by check, verdict (passed/failed) and what was done "
            "(posted, unchanged, not_reportable, deferred, stale).",
            ["check", "verdict", "action"],
            registry=registry,
        )
        self.gitlab_requests = Counter(
            f"{PREFIX}_gitlab_requests",
            "Requests to GitLab's API by method, endpoint template and HTTP status "
            "(`error` when no answer came: timeout or connection failure). Retries count.",
            ["method", "endpoint", "status"],
            registry=registry,
        )
        self.gitlab_rate_limit_remaining = Gauge(
            f"{PREFIX}_gitlab_rate_limit_remaining",
            "GitLab's RateLimit-Remaining on its latest answer that carried one (-1: none yet).",
            registry=registry,
        )
        self.gitlab_rate_limit_remaining.set(-1)
        self.sweep_seconds = Histogram(
            f"{PREFIX}_sweep_duration_seconds",
            "Time one reconciliation sweep took.",
            buckets=SWEEP_BUCKETS,
            registry=registry,
        )
        self.sweep_repairs = Counter(
            f"{PREFIX}_sweep_repairs",
            "Statuses sweeps corrected: `repaired` counts every one, `tampered` those where "
            "GitLab showed a verdict the bot never posted (set by hand).",
            ["kind"],
            registry=registry,
        )
        self.notes = Counter(
            f"{PREFIX}_notes",
            "Sticky MR note writes by action (created, updated, failed).",
            ["action"],
            registry=registry,
        )
        self.policies_loaded = Gauge(
            f"{PREFIX}_policies",
            "Policies in the set being served.",
            registry=registry,
        )
        self.policies_broken = Gauge(
            f"{PREFIX}_policies_broken",
            "1 while the policy files on disk do not load (the last good set serves), else 0.",
            registry=registry,
        )
        self.policies_broken_since = Gauge(
            f"{PREFIX}_policies_broken_since_seconds",
            "Unix time since when the policy files on disk do not load (0 while they do).",
            registry=registry,
        )
        self.policy_reloads = Counter(
            f"{PREFIX}_policy_reloads",
            "Policy reloads by outcome (loaded, unchanged, failed, slow).",
            ["outcome"],
            registry=registry,
        )
        self.record_failing = Gauge(
            f"{PREFIX}_record_failing",
            "1 while the decision record's database fails (replaced, damaged, disk full), else 0.",
            registry=registry,
        )
        self.record_failing_since = Gauge(
            f"{PREFIX}_record_failing_since_seconds",
            "Unix time since when the decision record fails (0 while it works).",
            registry=registry,
        )
        self.record_errors = Counter(
            f"{PREFIX}_record_errors",
            "Failed reads and write transactions of the decision record, by op (read, write).",
            ["op"],
            registry=registry,
        )
        self._endpoints: set[str] = set()
        self._children: dict[tuple[Any, ...], Any] = {}
        for kind in ("repaired", "tampered"):
            self.sweep_repairs.labels(kind=kind)

    # -- feeds ------------------------------------------------------------------------------

    def delivery(self, kind: str, outcome: str) -> None:
        """intake's `on_delivery` callback."""
        self._child(self.deliveries, kind if kind in KNOWN_KINDS else "other", outcome).inc()

    def watch_queue(
        self,
        depth: Callable[[], float],
        running: Callable[[], float],
        scheduled: Callable[[], float],
    ) -> None:
        """Read the queue's sizes at scrape time."""
        self.queue_depth.set_function(depth)
        self.queue_running.set_function(running)
        self.queue_scheduled.set_function(scheduled)

    def watch_record(self, record: Any) -> None:
        """Read the decision record's health (bot.service.record.DecisionRecord) at scrape time, and
        count its errors as they happen (from its writer thread too: counters are thread-safe).
        """
        self.record_failing.set_function(lambda: 0 if record.failing_since is None else 1)
        self.record_failing_since.set_function(lambda: record.failing_since or 0)
        for op in ("read", "write"):
            self.record_errors.labels(op=op)
        record.on_error = lambda op: self.record_errors.labels(op=op).inc()

    def watch_policies(self, store: Any) -> None:
        """Read the policy store (bot.service.policy_store.PolicyStore) at scrape time, and count
        reloads."""
        self.policies_loaded.set_function(lambda: len(store.current))
        self.policies_broken.set_function(lambda: 0 if store.broken_since is None else 1)
        self.policies_broken_since.set_function(lambda: store.broken_since or 0)
        store.on_reload = lambda outcome: self._child(self.policy_reloads, outcome).inc()

    def evaluation_finished(self, seconds: float, outcome: str = "ok") -> None:
        self._child(self.evaluation_seconds, outcome).observe(seconds)

    def timed(
        self, handler: Callable[[Any, Any], Awaitable[float | None]]
    ) -> Callable[[Any, Any], Awaitable[float | None]]:
        """Wrap the queue's handler so each MR evaluation lands in the duration histogram
        (branch lookups for pipeline hooks are not evaluations and are not timed)."""

        async def run(key: Any, hint: Any) -> float | None:
            started = time.perf_counter()
            try:
                result = await handler(key, hint)
            except Exception:
                if isinstance(key, MRKey):
                    self.evaluation_finished(time.perf_counter() - started, "error")
                raise
            if isinstance(key, MRKey):
                self.evaluation_finished(time.perf_counter() - started, "ok")
            return result

        return run

    def verdict(self, decision: Decision) -> None:
        """An `Evaluator.listeners` entry: one call per decision."""
        self._child(self.verdicts, decision.check, decision.verdict.status, decision.action).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, kept: `labels()` takes a lock and builds its key on every
        call, and these run for every delivery, request and verdict. As many entries as label
        sets, which are bounded (see the module docstring)."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def gitlab_response(
        self, method: str, url: str, status: int | None, headers: Mapping[str, str]
    ) -> None:
        """The GitLab client's `on_response` callback (called for every attempt)."""
        endpoint = endpoint_template(url)
        if endpoint not in self._endpoints:
            if len(self._endpoints) >= MAX_ENDPOINTS:
                endpoint = "other"
            else:
                self._endpoints.add(endpoint)
        status_label = str(status) if status is not None else "error"
        self._child(self.gitlab_requests, method.upper(), endpoint, status_label).inc()
        remaining = _header(headers, "RateLimit-Remaining")
        if remaining is not None:
            with contextlib.suppress(ValueError):
                self.gitlab_rate_limit_remaining.set(float(remaining))

    def sweep_finished(self, duration_seconds: float, repaired: int, tampered: int) -> None:
        """Called once per reconciliation sweep; `repaired` includes the `tampered` ones."""
        self.sweep_seconds.observe(duration_seconds)
        if repaired:
            self.sweep_repairs.labels(kind="repaired").inc(repaired)
        if tampered:
            self.sweep_repairs.labels(kind="tampered").inc(tampered)

    def note_written(self, action: str) -> None:
        self.notes.labels(action=action).inc()

    # -- exposition -------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from `Accept` the way
        prometheus-client's own HTTP server does (text format by default, OpenMetrics on ask)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

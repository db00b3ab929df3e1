"""GET /metrics (Prometheus, read with prometheus-client's own parser); /readyz: test_app.py."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.service.app import METRICS
from bot.service.metrics import Metrics, endpoint_template
from tests import payloads
from tests.builders import running_pipeline, seed_mr
from tests.conftest import TOKEN, Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40


def seed(gitlab: FakeGitLab) -> None:
    checks = ("conventional-title", "pipeline-green")
    seed_mr(gitlab, checks, sha=SHA, head_pipeline=running_pipeline(SHA))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(bot: Bot) -> tuple[Samples, str]:
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        assert resp.status == 200
        return parse(await resp.text()), resp.headers["Content-Type"]


async def test_metrics_parse_and_count_every_delivery_by_kind_and_outcome(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    before, content_type = await scrape(bot)
    assert content_type.startswith("text/plain; version=0.0.4")
    queued = ("gitlab_status_bot_deliveries_total", {"kind": "Merge Request Hook"})
    assert value(before, queued[0], **queued[1], outcome="queued") == 0

    for _ in range(3):
        status, _ = await bot.deliver(payloads.merge_request_hook(sha=SHA))
        assert status == 202
    tag = {"object_kind": "tag_push", "project_id": 1, "ref": "refs/tags/v1"}
    await bot.deliver(tag, event="Push Hook")
    await bot.deliver(payloads.merge_request_hook(sha=SHA), token="wrong")
    await bot.deliver(None, raw=b"{not json")
    # A made-up event name must not become a label value of its own.
    await bot.deliver({"x": 1}, event="Totally Made Up <script> Hook")
    await bot.settle()

    after, _ = await scrape(bot)
    name = "gitlab_status_bot_deliveries_total"
    assert value(after, name, kind="Merge Request Hook", outcome="queued") == 3
    assert value(after, name, kind="Merge Request Hook", outcome="unauthorized") == 1
    assert value(after, name, kind="Merge Request Hook", outcome="malformed") == 1
    assert value(after, name, kind="Push Hook", outcome="ignored") == 1
    assert value(after, name, kind="other", outcome="ignored") == 1
    kinds = {dict(labels)["kind"] for (sample, labels) in after if sample == name}
    assert kinds == {"Merge Request Hook", "Push Hook", "other"}
    assert sum(v for (sample, _), v in after.items() if sample == name) == 7


async def test_verdicts_evaluations_and_queue_are_measured(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    samples, _ = await scrape(bot)
    verdicts = "gitlab_status_bot_verdicts_total"
    assert value(samples, verdicts, check="conventional-title", verdict="passed", action="posted")
    assert value(samples, verdicts, check="pipeline-green", verdict="failed", action="posted") == 1
    assert value(samples, "gitlab_status_bot_evaluation_duration_seconds_count", outcome="ok") == 1
    assert value(samples, "gitlab_status_bot_evaluation_duration_seconds_sum", outcome="ok") > 0
    assert value(samples, "gitlab_status_bot_queue_depth") == 0
    assert ("gitlab_status_bot_queue_running", frozenset()) in samples

    # The same state again: nothing posted, and the counter says so.
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    samples, _ = await scrape(bot)
    assert value(samples, verdicts, check="pipeline-green", verdict="failed", action="posted") == 1
    assert value(samples, verdicts, check="pipeline-green", verdict="failed", action="unchanged")
    assert value(samples, "gitlab_status_bot_evaluation_duration_seconds_count", outcome="ok") == 2


async def test_gitlab_calls_are_counted_by_templated_endpoint_and_status(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    gitlab.rate_limit_remaining = 500
    gitlab.rate_limit_headers_always = True  # GitLab.com-like: RateLimit-* on every answer
    gitlab.fail(502, path_contains="/status_checks", method="GET")  # retried
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    samples, _ = await scrape(bot)
    calls = {
        (labels["method"], labels["endpoint"], labels["status"]): v
        for (sample, frozen), v in samples.items()
        if sample == "gitlab_status_bot_gitlab_requests_total"
        for labels in [dict(frozen)]
    }
    endpoints = {endpoint for _, endpoint, _ in calls}
    mr = "/projects/:id/merge_requests/:iid"
    assert {mr, f"{mr}/status_checks", f"{mr}/status_check_responses"} <= endpoints
    assert calls[("GET", f"{mr}/status_checks", "502")] == 1
    assert calls[("GET", f"{mr}/status_checks", "200")] == 1
    assert calls[("POST", f"{mr}/status_check_responses", "201")] == 2
    for endpoint in endpoints:  # no ids, no query strings, no token
        assert not re.search(r"\d", endpoint) and "?" not in endpoint and TOKEN not in endpoint
    # Every request the fake answered is counted once.
    answered = [c for c in gitlab.calls if c.status]
    assert sum(calls.values()) == len(answered)
    remaining = value(samples, "gitlab_status_bot_gitlab_rate_limit_remaining")
    assert remaining == gitlab.rate_limit_remaining


@pytest.mark.parametrize(
    ("url", "template"),
    [
        ("http://gl/api/v4/version", "/version"),
        ("http://gl/api/v4/projects/17/merge_requests/5", "/projects/:id/merge_requests/:iid"),
        (
            "http://gl/api/v4/projects/acme%2Fapp/merge_requests/5/diffs?per_page=100&page=3",
            "/projects/:id/merge_requests/:iid/diffs",
        ),
        (
            "http://gl/api/v4/projects/acme%2Fapp/merge_requests?state=opened&source_branch=x",
            "/projects/:id/merge_requests",
        ),
        (
            "http://gl/api/v4/projects/1/merge_requests/2/notes/88123",
            "/projects/:id/merge_requests/:iid/notes/:note_id",
        ),
        (
            "http://gl/api/v4/projects/1/merge_requests/2/status_checks/9/retry",
            "/projects/:id/merge_requests/:iid/status_checks/:check_id/retry",
        ),
        ("http://gl/api/v4/groups/acme%2Fsec/members/all", "/groups/:id/members/all"),
        ("http://gl/api/v4/projects/4/hooks/12", "/projects/:id/hooks/:hook_id"),
        ("http://gl/gitlab/api/v4/user?private_token=secret", "/user"),
    ],
)
def test_endpoint_templates_have_no_ids_or_queries(url: str, template: str) -> None:
    assert endpoint_template(url) == template


def test_sweep_and_note_feeds_and_one_registry_per_app() -> None:
    first, second = Metrics(), Metrics()  # a shared (global) registry would refuse the second
    first.sweep_finished(1.5, repaired=2, tampered=1)
    first.sweep_finished(0.5, repaired=0, tampered=0)
    first.note_written("created")
    samples = parse(first.exposition()[0].decode())
    assert value(samples, "gitlab_status_bot_sweep_duration_seconds_count") == 2
    assert value(samples, "gitlab_status_bot_sweep_duration_seconds_sum") == 2.0
    assert value(samples, "gitlab_status_bot_sweep_repairs_total", kind="repaired") == 2
    assert value(samples, "gitlab_status_bot_sweep_repairs_total", kind="tampered") == 1
    assert value(samples, "gitlab_status_bot_notes_total", action="created") == 1
    untouched = parse(second.exposition()[0].decode())
    assert value(untouched, "gitlab_status_bot_sweep_duration_seconds_count") == 0


async def test_openmetrics_is_served_when_asked_for(bot: Bot) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with bot.session.get(f"{bot.url}/metrics", headers=headers) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")
    assert bot.app[METRICS].registry is not None

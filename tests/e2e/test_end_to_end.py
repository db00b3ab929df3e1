"""The bot as a real server against the fake GitLab: deliveries in, status check verdicts out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.service.app import EVALUATOR
from tests import payloads
from tests.builders import running_pipeline, seed_mr
from tests.conftest import TOKEN, WEBHOOK_SECRET, Bot, eventually, write_policies
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
SHA2 = "2" * 40
MR_PATH = "/projects/1/merge_requests/1"


def seed(gitlab: FakeGitLab, **mr: Any) -> None:
    """Project 1 (acme/app) with MR !1 and three status checks; one belongs to another service."""
    fields = {"sha": SHA, "head_pipeline": running_pipeline(SHA), **mr}
    seed_mr(gitlab, ("conventional-title", "pipeline-green", "someone-elses-check"), **fields)


def reads_of_mr(gitlab: FakeGitLab) -> int:
    return sum(1 for c in gitlab.calls if c.method == "GET" and c.path.endswith(MR_PATH))


async def test_mr_opened_posts_one_verdict_per_changed_check(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    status, body = await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
    assert status == 202, body
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    assert gitlab.check_status(1, 1, "someone-elses-check") == "pending"
    posts = gitlab.status_posts()
    assert len(posts) == 2
    assert {p.json["sha"] for p in posts} == {SHA}
    assert sorted(p.json["status"] for p in posts) == ["failed", "passed"]

    # Nothing changed: GitLab already shows both verdicts, so nothing is posted.
    gitlab.reset_calls()
    await bot.deliver(payloads.merge_request_hook(sha=SHA, action="update"))
    await bot.settle()
    assert gitlab.status_posts() == []
    assert reads_of_mr(gitlab) == 1

    # Only the title changes: exactly one POST, for the title check.
    gitlab.update_mr(1, 1, title="Add login")
    await bot.deliver(payloads.merge_request_hook(sha=SHA, action="update"))
    await bot.settle()
    posts = gitlab.status_posts()
    assert len(posts) == 1
    assert posts[0].json["status"] == "failed"
    assert gitlab.check_status(1, 1, "conventional-title") == "failed"


async def test_payload_contents_are_not_trusted(gitlab: FakeGitLab, bot: Bot) -> None:
    """The sample payload's title is not conventional; GitLab's API says it is: the API wins."""
    seed(gitlab)
    payload = payloads.merge_request_hook(sha="f" * 40)
    payload["object_attributes"]["title"] = "not conventional at all"
    await bot.deliver(payload)
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert {p.json["sha"] for p in gitlab.status_posts()} == {SHA}


async def test_push_during_evaluation_posts_only_for_the_new_head(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab, title="Add login")
    pushed = asyncio.Event()

    async def push_while_posting(call: Any) -> None:
        # The bot judged SHA and posts for it; meanwhile a push makes SHA2 the head, and GitLab
        # delivers the push event. The POST for SHA must then be refused with 409.
        if not pushed.is_set():
            pushed.set()
            gitlab.push(1, 1, SHA2)
            await bot.deliver(payloads.merge_request_hook(sha=SHA2, action="update"))

    gitlab.on_request("POST", "status_check_responses", push_while_posting)
    await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
    await bot.settle()
    assert pushed.is_set()
    conflicts = [
        c for c in gitlab.calls if c.path.endswith("status_check_responses") and c.status == 409
    ]
    assert conflicts, "the fake should have refused the stale SHA"
    accepted = gitlab.status_posts()
    assert accepted and {p.json["sha"] for p in accepted} == {SHA2}
    assert gitlab.check_status(1, 1, "conventional-title") == "failed"
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"


async def test_409_alone_leads_to_re_evaluation(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    gitlab.fail(
        409,
        times=1,
        path_contains="status_check_responses",
        body={"message": f"SHA does not match HEAD of source branch: {SHA2}"},
    )
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    assert reads_of_mr(gitlab) == 2
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"


async def test_a_burst_of_deliveries_is_evaluated_at_most_twice(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    gitlab.latency = 0.05
    results = await asyncio.gather(
        *(bot.deliver(payloads.merge_request_hook(sha=SHA)) for _ in range(20))
    )
    assert all(status == 202 for status, _ in results)
    await bot.settle()
    assert 1 <= reads_of_mr(gitlab) <= 2
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


@pytest.mark.parametrize(
    ("token", "expected_error"),
    [(None, "missing X-Gitlab-Token"), ("wrong", "wrong X-Gitlab-Token")],
)
async def test_wrong_or_missing_token_is_refused_without_gitlab_calls(
    gitlab: FakeGitLab, bot: Bot, token: str | None, expected_error: str
) -> None:
    seed(gitlab)
    gitlab.reset_calls()
    headers = {"X-Gitlab-Token": token} if token else {}
    status, body = await bot.deliver(payloads.merge_request_hook(), token=None, headers=headers)
    assert status == 401
    assert body == {"error": expected_error}
    await asyncio.sleep(0.1)
    assert gitlab.calls == []


async def test_malformed_and_irrelevant_deliveries(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    gitlab.reset_calls()
    status, body = await bot.deliver(None, raw=b'{"object_kind": "merge_request", ')
    assert status == 400 and "malformed JSON" in body["error"]
    status, body = await bot.deliver(
        {"object_kind": "tag_push", "project_id": 1, "ref": "refs/tags/v1"}, event="Push Hook"
    )
    assert (status, body["status"]) == (200, "ignored")
    status, body = await bot.deliver({"object_kind": "merge_request"})
    assert status == 400 and "object_attributes" in body["error"]
    payload = payloads.merge_request_hook()
    payload["object_attributes"]["iid"] = "twelve"
    status, body = await bot.deliver(payload)
    assert status == 400 and "object_attributes.iid" in body["error"]
    status, body = await bot.deliver(payloads.merge_request_hook(action="merge"))
    assert (status, body["status"]) == (200, "ignored")
    status, body = await bot.deliver({"hello": "world"}, event=None)
    assert status == 400 and "external_approval_rule" in body["error"]
    await asyncio.sleep(0.1)
    assert gitlab.calls == []


async def test_status_check_request_without_content_type_is_parsed(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab)
    body = json.dumps(payloads.status_check_request(check_name="conventional-title")).encode()
    status, answer = await bot.deliver(None, event=None, raw=body, headers={"Content-Type": ""})
    assert status == 202, answer
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


async def test_signed_status_check_requests(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    seed(gitlab)
    bot = await start_bot(status_check_secret="shared_secret")
    body = json.dumps(payloads.status_check_request()).encode()
    good = {"X-Gitlab-Signature": payloads.sign("shared_secret", body)}
    bad = {"X-Gitlab-Signature": payloads.sign("other", body)}
    assert (await bot.deliver(None, event=None, raw=body, headers=bad))[0] == 401
    assert (await bot.deliver(None, event=None, raw=body))[0] == 401
    assert (await bot.deliver(None, event=None, raw=body, headers=good))[0] == 202
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


def test_signature_matches_gitlabs_test_vector() -> None:
    from bot.service.intake import _valid_signature

    vector = "6c52a647de5847fc387ead12919dc6a5b9ed08e9538583c83da266d958e33aec"
    assert _valid_signature(vector, "shared_secret", b"{}")
    assert not _valid_signature(vector, "shared_secret", b"{ }")


async def test_recheck_note_re_evaluates(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    gitlab.reset_calls()
    status, body = await bot.deliver(payloads.note_hook(note="looks good"), event="Note Hook")
    assert (status, body["status"]) == (200, "ignored")
    status, _ = await bot.deliver(payloads.note_hook(note="/recheck\nplease"), event="Note Hook")
    assert status == 202
    await bot.settle()
    assert reads_of_mr(gitlab) == 1
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


async def test_recheck_in_an_internal_note_re_evaluates(gitlab: FakeGitLab, bot: Bot) -> None:
    """An internal note fires `Confidential Note Hook` (to hooks with confidential_note_events,
    as `register` sets them up); its /recheck re-evaluates like a public one."""
    seed(gitlab)
    gitlab.add_hook(
        1,
        f"{bot.url}/webhook",
        merge_requests_events=True,
        note_events=True,
        confidential_note_events=True,
        token=WEBHOOK_SECRET,
    )
    gitlab.reset_calls()
    note = gitlab.add_note(1, 1, "/recheck", author={"id": 7, "username": "sam"}, internal=True)
    [delivery] = gitlab.note_deliveries(1, 1, note)
    assert delivery["headers"]["X-Gitlab-Event"] == "Confidential Note Hook"
    status, body = await bot.deliver(
        delivery["payload"], event=None, token=None, headers=delivery["headers"]
    )
    assert status == 202, body
    await bot.settle()
    assert reads_of_mr(gitlab) == 1
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"


async def test_pipeline_success_flips_the_pipeline_rule(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    gitlab.set_pipeline(1, 1, "success")
    status, _ = await bot.deliver(
        payloads.pipeline_hook(sha=SHA, status="success"), event="Pipeline Hook"
    )
    assert status == 202
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"


async def test_branch_pipeline_finds_the_mr_of_its_branch(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    gitlab.set_pipeline(1, 1, "success")
    hook = payloads.pipeline_hook(iid=None, ref="feature", status="success")
    status, _ = await bot.deliver(hook, event="Pipeline Hook")
    assert status == 202
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"


async def test_system_hook_merge_request_event(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    status, _ = await bot.deliver(payloads.system_hook(sha=SHA), event="System Hook")
    assert status == 202
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    status, body = await bot.deliver({"object_kind": "project_create"}, event="System Hook")
    assert (status, body["status"]) == (200, "ignored")


async def test_closed_and_merged_mrs_are_not_evaluated(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab, state="merged")
    await bot.deliver(payloads.merge_request_hook(sha=SHA, action="update"))
    await bot.settle()
    assert gitlab.status_posts() == []


async def test_gitlab_14_posts_nothing_for_failures_and_no_status_field(
    policy_dir: Path, make_settings: Callable[..., Any], start_bot: Callable[..., Any]
) -> None:
    fake = FakeGitLab(version="14.5.0", token=TOKEN)
    await fake.start()
    try:
        seed(fake)
        bot = await start_bot(gitlab_url=fake.url)
        await bot.deliver(
            payloads.merge_request_hook(sha=SHA, sample_name="merge-request-hook-open-14x.json")
        )
        await bot.settle()
        posts = fake.status_posts()
        assert len(posts) == 1, "only the passing check may be posted on 14.x"
        assert "status" not in posts[0].json
        assert fake.check_status(1, 1, "conventional-title") == "approved"
        assert fake.check_status(1, 1, "pipeline-green") == "pending"
    finally:
        await fake.close()


async def test_changed_files_come_from_diffs_or_changes_by_version(
    tmp_path: Path, start_bot: Callable[..., Any]
) -> None:
    policies = write_policies(
        tmp_path / "docs-policies",
        {"docs.yml": "check: docs-only\nrequire:\n  - only_changed_files: ['docs/**']\n"},
    )
    for version, endpoint in (("15.3.0", "/changes"), ("18.2.0", "/diffs")):
        fake = FakeGitLab(version=version, token=TOKEN)
        await fake.start()
        try:
            fake.add_project(1, "acme/app")
            fake.add_mr(1, 1, sha=SHA, title="docs")
            fake.set_diffs(
                1,
                1,
                [
                    {
                        "old_path": "docs/a.md",
                        "new_path": "docs/a.md",
                        "diff": "@@ -1 +1 @@\n-a\n+b\n",
                    }
                ],
            )
            fake.add_status_check(1, "docs-only")
            bot = await start_bot(gitlab_url=fake.url, policy_dir=policies)
            await bot.deliver(payloads.merge_request_hook(sha=SHA))
            await bot.settle()
            assert fake.check_status(1, 1, "docs-only") == "passed"
            assert fake.calls_to("GET", f"{MR_PATH}{endpoint}"), version
        finally:
            await fake.close()


async def test_title_only_policies_read_no_diffs_or_approvals(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    paths = {c.path for c in gitlab.calls}
    assert not any(p.endswith(("/diffs", "/changes", "/approvals", "/commits")) for p in paths)
    # One round of reads (MR + status checks), then the writes.
    assert reads_of_mr(gitlab) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_gitlab_refusals_are_logged_once_with_advice_and_not_retried(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    seed(gitlab)
    gitlab.fail(status, times=100, path_contains="status_check_responses")
    for _ in range(3):
        await bot.deliver(payloads.merge_request_hook(sha=SHA))
        await bot.settle()
    posts = [c for c in gitlab.calls if c.path.endswith("status_check_responses")]
    assert len(posts) == 6  # two checks, three deliveries, no retries
    events = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    refusals = [e for e in events if e["event"] == "gitlab_refused" and e["level"] == "error"]
    assert len(refusals) == 1
    assert f"GitLab answered {status}" in refusals[0]["advice"]


async def test_decisions_are_logged_with_their_context_and_no_secret(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(gitlab)
    await bot.deliver(
        payloads.merge_request_hook(sha=SHA),
        headers={"X-Gitlab-Event-UUID": "ev-123", "X-Gitlab-Webhook-UUID": "wh-456"},
    )
    await bot.settle()
    output = capsys.readouterr().err
    assert TOKEN not in output and WEBHOOK_SECRET not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    delivery = next(e for e in events if e["event"] == "delivery_queued")
    assert (delivery["event_uuid"], delivery["webhook_uuid"]) == ("ev-123", "wh-456")
    decisions = {e["check"]: e for e in events if e["event"] == "decision"}
    assert set(decisions) == {"conventional-title", "pipeline-green"}
    failed = decisions["pipeline-green"]
    assert failed["project"] == "acme/app" and failed["mr"] == 1 and failed["sha"] == SHA
    assert failed["verdict"] == "failed" and failed["action"] == "posted"
    assert "running" in failed["reason"]
    assert any(
        e["event"] == "checks_without_policy" and e["checks"] == ["someone-elses-check"]
        for e in events
    )


# UNREADABLE: /version fails for good. GitLab's 503 with Retry-After: 0 makes each ask fail at
# once, where a 500's retries wait out a backoff first: the same unknown version, seconds sooner.


async def test_version_endpoint_failing_is_tolerated(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """/version keeps failing, but the MR read shows `detailed_merge_status` (GitLab 15.6+): the
    failure is posted at once instead of waiting for the version, and /version is asked again
    with a growing pause (1 s, 2 s, ...), not in a tight loop."""
    seed(gitlab)
    gitlab.fail(503, retry_after=0, times=10_000, path_contains="/version")  # see UNREADABLE
    bot = await start_bot()
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    assert [c.json.get("status") for c in gitlab.status_posts()] == ["passed", "failed"]
    asked = len(gitlab.calls_to("GET", "/version"))
    await asyncio.sleep(3.0)
    # Asked again (each ask is up to 4 attempts), with pauses of 1 s, 2 s, 4 s... in between:
    # a few attempts, not hundreds.
    assert asked < len(gitlab.calls_to("GET", "/version")) <= asked + 12


async def test_an_unreadable_version_is_asked_again_after_gitlabs_retry_after(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """/version answers 503 with Retry-After: 1 through the start-up attempts: it is asked
    again a second later (not a minute later), and then known."""
    seed(gitlab)
    gitlab.fail(503, times=4, retry_after=1, path_contains="/version")
    bot = await start_bot()
    evaluator = bot.app[EVALUATOR]
    await eventually(lambda: evaluator.gitlab.detected_version is not None, 8)
    asks = gitlab.calls_to("GET", "/version")
    assert [c.status for c in asks] == [503, 503, 503, 503, 200]
    assert 0.9 <= asks[-1].started - asks[-2].finished < 3.0


async def test_an_unknown_version_before_15_6_is_found_by_a_probe_that_stores_nothing(
    policy_dir: Path, start_bot: Callable[..., Any]
) -> None:
    """GitLab 15.2 shows no `detailed_merge_status` and /version stays unreadable; no check has
    passed yet. A status POST without `status`, for a SHA that is never the head, stores
    nothing and tells: 15.0+ requires `status` (400). The failures are posted at once."""
    async with FakeGitLab(version="15.2.0", token=TOKEN) as fake:
        seed(fake, title="added login")  # both checks fail
        fake.fail(503, retry_after=0, times=10_000, path_contains="/version")  # see UNREADABLE
        bot = await start_bot(gitlab_url=fake.url)
        await bot.deliver(payloads.merge_request_hook(sha=SHA))
        await bot.settle()
        assert fake.check_status(1, 1, "conventional-title") == "failed"
        assert fake.check_status(1, 1, "pipeline-green") == "failed"
        [probe] = [c for c in fake.calls_to("POST", "status_check_responses") if c.status == 400]
        assert "status" not in probe.json and probe.json["sha"] != SHA
        assert [r.status for r in fake.status_responses(1, 1)] == ["failed", "failed"]


async def test_a_probe_on_gitlab_14_reports_no_failure_and_stores_nothing(
    policy_dir: Path, start_bot: Callable[..., Any]
) -> None:
    """On 14.x the same probe is refused for its SHA (409) and stores nothing: failures are
    then known to be unreportable (a POST would read as approval) and nothing is posted."""
    async with FakeGitLab(version="14.5.0", token=TOKEN) as fake:
        seed(fake, title="added login")
        fake.fail(503, retry_after=0, times=10_000, path_contains="/version")  # see UNREADABLE
        bot = await start_bot(gitlab_url=fake.url)
        await bot.deliver(payloads.merge_request_hook(sha=SHA))
        await bot.settle()
        assert fake.status_responses(1, 1) == []
        assert fake.check_status(1, 1, "conventional-title") == "pending"
        assert [c.status for c in fake.calls_to("POST", "status_check_responses")] == [409]


async def test_an_approved_status_reveals_gitlab_14_when_the_version_is_unknown(
    policy_dir: Path, start_bot: Callable[..., Any]
) -> None:
    async with FakeGitLab(version="14.5.0", token=TOKEN) as fake:
        seed(fake)
        fake.fail(503, retry_after=0, times=100, path_contains="/version")  # see UNREADABLE
        bot = await start_bot(gitlab_url=fake.url)
        other = {c["name"]: c["id"] for c in fake.projects[1].checks.values()}
        fake.set_status(1, 1, other["someone-elses-check"], SHA, "approved")  # its service said so
        await bot.deliver(payloads.merge_request_hook(sha=SHA))
        await bot.settle()
        assert fake.check_status(1, 1, "conventional-title") == "approved"
        assert fake.check_status(1, 1, "pipeline-green") == "pending"
        # The listed `approved` says 14.x: the failure is not reportable, never posted (and
        # no probe is needed).
        assert len(fake.status_posts()) == 1
        assert len(fake.calls_to("POST", "status_check_responses")) == 1


async def test_health_and_readiness(gitlab: FakeGitLab, bot: Bot) -> None:
    async with bot.session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["policies"] == 2


async def test_a_refused_fact_fails_only_the_checks_that_need_it(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    policy_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_policies(
        policy_dir,
        {
            "ops.yml": """
                check: ops-approval
                require:
                  - approvals: {count: 1, from: {groups: [acme/operations]}}
            """
        },
    )
    seed(gitlab, approved_by=[{"id": 3, "username": "carol"}])
    gitlab.add_status_check(1, "ops-approval")  # acme/operations does not exist: 404
    bot = await start_bot()
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    # The other checks are decided as usual; the one that needs the group fails with why.
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "passed",
        "pipeline-green": "failed",
        "ops-approval": "failed",
        "someone-elses-check": "pending",
    }
    events = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    ops = next(e for e in events if e["event"] == "decision" and e["check"] == "ops-approval")
    assert ops["reason"] == (
        "approvals: 0 of 1 from acme/operations (carol approved; cannot read members of "
        "acme/operations: GitLab answered 404: the project, merge request or status check does "
        "not exist, or the token's user cannot see it (add it as a member of the project))"
    )


async def test_a_group_gitlab_cannot_show_fails_no_mr_its_policy_does_not_apply_to(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], policy_dir: Path
) -> None:
    """A typo in a group name must not block every MR where "Status checks must succeed" is on:
    applicability is decided first, and a fact matters only where a rule needs it."""
    write_policies(
        policy_dir,
        {
            "dba.yml": """
                check: dba-review
                applies_to: {target_branches: ["release/*"]}
                require:
                  - approvals: {count: 1, from: {groups: [acme/dbas]}}
            """
        },
    )
    seed(gitlab, approved_by=[{"id": 3, "username": "carol"}])
    gitlab.add_status_check(1, "dba-review")  # acme/dbas does not exist: 404
    # The start-up sweep judges the MR with no delivery to hint at its target branch.
    bot = await start_bot(projects=("acme/app",), sweep_budget=500)
    await eventually(lambda: gitlab.check_status(1, 1, "dba-review") != "pending")
    assert gitlab.check_status(1, 1, "dba-review") == "passed"  # not applicable to main
    # A /recheck says nothing about the branch either; the bot may read the group (it guesses
    # which facts to read with the MR), but the policy still does not apply.
    await bot.deliver(payloads.note_hook(note="/recheck"), event="Note Hook")
    await bot.settle()
    assert gitlab.check_status(1, 1, "dba-review") == "passed"
    assert [c.json["status"] for c in gitlab.status_posts() if c.json["sha"] == SHA][-1:] == [
        "passed"
    ]


async def test_gitlab_14_failures_are_logged_as_not_reportable(
    start_bot: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeGitLab(version="14.5.0", token=TOKEN) as fake:
        seed(fake)
        bot = await start_bot(gitlab_url=fake.url)
        await bot.deliver(payloads.merge_request_hook(sha=SHA))
        await bot.settle()
    events = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    actions = {e["check"]: e["action"] for e in events if e["event"] == "decision"}
    assert actions == {"conventional-title": "posted", "pipeline-green": "not_reportable"}


async def test_serve_warns_at_start_about_groups_gitlab_cannot_show(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    policy_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_policies(
        policy_dir,
        {
            "dba.yml": """
                check: dba-review
                require:
                  - approvals: {count: 1, from: {groups: [acme/dba]}}
            """
        },
    )
    await start_bot()

    def warnings() -> list[dict[str, Any]]:
        lines = capsys.readouterr().err.splitlines()
        seen.extend(json.loads(x) for x in lines if x.startswith("{"))
        return [e for e in seen if e["event"] == "policy_reference_unreadable"]

    seen: list[dict[str, Any]] = []
    await eventually(lambda: bool(warnings()))
    (warning,) = warnings()
    assert warning["level"] == "warning"
    assert warning["problem"].startswith(
        f"{policy_dir}/dba.yml:4: group acme/dba: GitLab answered 404"
    )

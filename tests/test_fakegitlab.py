"""The fake GitLab behaves like GitLab where the bot depends on it (docs/architecture.md,
"GitLab facts" and "How we test").

Each test talks to a real fake server over HTTP, mostly through gidgetlab as the bot does.
"""

from __future__ import annotations

import asyncio
import email.utils
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import gidgetlab
import gidgetlab.aiohttp
import pytest

from tests.fakegitlab import Call, FakeGitLab, diff_file, sha_for

ROOT = Path(__file__).resolve().parent.parent
MR = "/projects/1/merge_requests/7"


async def make_fake(version: str = "18.9.0", **kwargs: Any) -> FakeGitLab:
    fake = FakeGitLab(version=version, **kwargs)
    await fake.start()
    fake.add_project(1, "acme/app")
    fake.add_mr(1, 7, sha=sha_for("head-1"), title="feat: add login")
    return fake


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitLab]:
    server = await make_fake()
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def api(session: aiohttp.ClientSession, fake: FakeGitLab, token: str | None = None) -> Any:
    return gidgetlab.aiohttp.GitLabAPI(
        session, "test", access_token=token or fake.token, url=fake.url
    )


def headers(fake: FakeGitLab) -> dict[str, str]:
    return {"PRIVATE-TOKEN": fake.token}


async def post_status(gl: Any, check_id: int, sha: str, status: str | None = "passed") -> Any:
    data: dict[str, Any] = {"external_status_check_id": check_id, "sha": sha}
    if status is not None:
        data["status"] = status
    return await gl.post(f"{MR}/status_check_responses", data=data)


# ---------------------------------------------------------------------------- auth and basics


async def test_requests_without_a_valid_token_get_401(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(gidgetlab.BadRequest) as wrong:
        await api(session, fake, token="wrong").getitem("/version")
    assert wrong.value.status_code == 401
    async with session.get(f"{fake.api_url}/version") as response:
        assert response.status == 401
        assert await response.json() == {"message": "401 Unauthorized"}
    bearer = {"Authorization": f"Bearer {fake.token}"}
    async with session.get(f"{fake.api_url}/version", headers=bearer) as response:
        assert response.status == 200
    assert [c.status for c in fake.calls] == [401, 401, 200]


async def test_version_and_unknown_resources(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    assert await gl.getitem("/version") == {"version": "18.9.0-ee", "revision": "abc"}
    project = await gl.getitem("/projects/acme%2Fapp")
    assert project["id"] == 1 and project["path_with_namespace"] == "acme/app"
    for url, message in [
        ("/projects/2", "404 Project Not Found"),
        ("/projects/1/merge_requests/99", "404 Merge Request Not Found"),
    ]:
        with pytest.raises(gidgetlab.BadRequest) as error:
            await gl.getitem(url)
        assert error.value.status_code == 404
        assert str(error.value) == message


async def test_mr_shape_depends_on_the_version(session: aiohttp.ClientSession) -> None:
    shapes = {}
    for version in ("14.5.0", "15.3.0", "16.8.0", "17.4.0"):
        fake = await make_fake(version)
        fake.add_mr(1, 8, title="Draft: wip", labels=["a", "b"], pipeline="running")
        shapes[version] = await api(session, fake).getitem("/projects/1/merge_requests/8")
        await fake.close()
    assert "draft" not in shapes["14.5.0"] and shapes["14.5.0"]["work_in_progress"] is True
    assert "detailed_merge_status" not in shapes["15.3.0"]
    assert shapes["15.3.0"]["draft"] is True and shapes["15.3.0"]["work_in_progress"] is True
    assert shapes["16.8.0"]["detailed_merge_status"] == "draft_status"
    assert "work_in_progress" not in shapes["17.4.0"] and shapes["17.4.0"]["draft"] is True
    mr = shapes["17.4.0"]
    assert mr["labels"] == ["a", "b"]
    assert mr["head_pipeline"]["status"] == "running" and mr["head_pipeline"]["sha"] == mr["sha"]
    assert mr["references"]["full"] == "acme/app!8"


# ---------------------------------------------------------------------------- pagination


async def test_getiter_follows_link_next_across_three_pages(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.set_commits(1, 7, [{"id": sha_for(f"c{n}"), "message": f"c{n}"} for n in range(250)])
    gl = api(session, fake)
    commits = [c async for c in gl.getiter(f"{MR}/commits", {"per_page": "100"})]
    assert [c["message"] for c in commits] == [f"c{n}" for n in range(250)]
    pages = fake.calls_to("GET", "/commits")
    assert [c.query["page"] for c in pages[1:]] == ["2", "3"]
    assert all(c.query["per_page"] == "100" for c in pages)

    async with session.get(
        f"{fake.api_url}{MR}/commits",
        params={"page": "3", "per_page": "100"},
        headers=headers(fake),
    ) as response:
        assert len(await response.json()) == 50
        assert response.headers["x-total"] == "250"
        assert response.headers["x-total-pages"] == "3"
        assert response.headers["x-next-page"] == ""
        assert response.headers["x-prev-page"] == "2"
        assert 'rel="next"' not in response.headers["link"]
        assert 'page=1&per_page=100>; rel="first"' in response.headers["link"]


async def test_diffs_pages_hold_at_most_30_files(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.set_diffs(1, 7, [diff_file(f"src/file_{n}.py") for n in range(70)])
    gl = api(session, fake)
    diffs = [d async for d in gl.getiter(f"{MR}/diffs", {"per_page": "100"})]
    assert len(diffs) == 70
    pages = fake.calls_to("GET", "/diffs")
    assert [len(c.response) for c in pages] == [30, 30, 10]


async def test_pagination_defaults_caps_and_keeps_query_params(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    for iid in range(1, 26):
        fake.add_mr(1, 100 + iid, state="opened" if iid % 5 else "merged")
    url = f"{fake.api_url}/projects/1/merge_requests"
    async with session.get(url, params={"state": "opened"}, headers=headers(fake)) as response:
        opened = await response.json()
        assert response.headers["x-per-page"] == "20" and response.headers["x-total"] == "21"
        assert len(opened) == 20 and all(mr["state"] == "opened" for mr in opened)
        assert "state=opened&page=2&per_page=20" in response.headers["link"]
        assert "head_pipeline" not in opened[0]  # the list entity is the basic one
    async with session.get(url, params={"per_page": "500"}, headers=headers(fake)) as response:
        assert response.headers["x-per-page"] == "100"
    async with session.get(url, params={"page": "x"}, headers=headers(fake)) as response:
        assert response.status == 400
        assert await response.json() == {"error": "page is invalid"}
    gl = api(session, fake)
    listed = [m["iid"] async for m in gl.getiter("/projects/1/merge_requests", {"state": "opened"})]
    assert len(listed) == 21


# ---------------------------------------------------------------------------- status checks


async def test_a_stale_sha_gets_409_naming_the_head(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    check = fake.add_status_check(1, "security-review")
    with pytest.raises(gidgetlab.BadRequest) as error:
        await post_status(api(session, fake), check["id"], sha_for("old"))
    assert error.value.status_code == 409
    assert str(error.value).startswith("SHA does not match HEAD of source branch")
    assert str(error.value).endswith(sha_for("head-1"))
    assert fake.status_posts() == []
    assert fake.check_status(1, 7, "security-review") == "pending"


async def test_status_list_shows_the_newest_response_for_the_head_and_resets_on_push(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    check = fake.add_status_check(1, "security-review", external_url="http://bot/hook?c=sec")
    gl = api(session, fake)
    head = fake.mr(1, 7)["sha"]
    created = await post_status(gl, check["id"], head, "failed")
    assert created["external_status_check"]["id"] == check["id"]
    assert created["merge_request"]["iid"] == 7
    await post_status(gl, check["id"], head, "passed")
    listed = await gl.getitem(f"{MR}/status_checks")
    assert listed == [
        {"id": check["id"], "name": "security-review", "external_url": "http://bot/hook"}
        | {"status": "passed"}
    ]
    assert [c.json["status"] for c in fake.status_posts()] == ["failed", "passed"]

    fake.push(1, 7, sha_for("head-2"))
    assert (await gl.getitem(f"{MR}/status_checks"))[0]["status"] == "pending"
    assert (await gl.getitem(MR))["head_pipeline"] is None
    with pytest.raises(gidgetlab.BadRequest):
        await post_status(gl, check["id"], head, "passed")
    await post_status(gl, check["id"], sha_for("head-2"), "failed")
    assert fake.check_status(1, 7, "security-review") == "failed"


async def test_status_post_parameters_by_version(session: aiohttp.ClientSession) -> None:
    answers: dict[str, list[tuple[int, Any]]] = {}
    for version in ("15.3.0", "16.4.0", "16.5.0"):
        fake = await make_fake(version)
        check = fake.add_status_check(1, "lint")
        head = fake.mr(1, 7)["sha"]
        url = f"{fake.api_url}{MR}/status_check_responses"
        answers[version] = []
        for body in (
            {"external_status_check_id": check["id"], "sha": head},
            {"sha": head, "status": "passed"},
            {"external_status_check_id": check["id"], "sha": head, "status": "pending"},
            {"external_status_check_id": check["id"], "sha": head, "status": "done"},
        ):
            async with session.post(url, json=body, headers=headers(fake)) as response:
                answers[version].append((response.status, await response.json()))
        await fake.close()
    for version in answers:
        assert answers[version][0] == (400, {"error": "status is missing"})
        assert answers[version][1] == (400, {"error": "external_status_check_id is missing"})
        assert answers[version][3] == (400, {"error": "status does not have a valid value"})
    assert answers["16.4.0"][2] == (400, {"error": "status does not have a valid value"})
    assert answers["16.5.0"][2][0] == 201


async def test_gitlab_14_records_any_post_as_approved_and_has_no_diffs_endpoint(
    session: aiohttp.ClientSession,
) -> None:
    fake = await make_fake("14.5.0")
    try:
        check = fake.add_status_check(1, "lint")
        gl = api(session, fake)
        assert (await gl.getitem(f"{MR}/status_checks"))[0]["status"] == "pending"
        await post_status(gl, check["id"], fake.mr(1, 7)["sha"], status="failed")  # ignored
        assert (await gl.getitem(f"{MR}/status_checks"))[0]["status"] == "approved"
        await post_status(gl, check["id"], fake.mr(1, 7)["sha"], status=None)
        assert len(fake.status_posts()) == 2

        with pytest.raises(gidgetlab.BadRequest) as error:
            await gl.getitem(f"{MR}/diffs")
        assert error.value.status_code == 404
        with pytest.raises(gidgetlab.BadRequest) as error:
            await gl.post(f"{MR}/status_checks/{check['id']}/retry", data={})
        assert error.value.status_code == 404
    finally:
        await fake.close()


async def test_changes_overflow_past_1000_files(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.set_diffs(1, 7, [diff_file(f"f{n}", additions=2, deletions=1) for n in range(3)])
    changes = await gl.getitem(f"{MR}/changes")
    assert changes["overflow"] is False and changes["iid"] == 7
    assert changes["changes"][0]["diff"].count("\n+") == 2
    fake.set_diffs(1, 7, [diff_file(f"f{n}") for n in range(1001)])
    changes = await gl.getitem(f"{MR}/changes")
    assert changes["overflow"] is True and len(changes["changes"]) == 1000
    assert changes["changes_count"] == "1000+"
    # access_raw_diffs reads the stored diff too: overflow is false, the files never stored
    # stay missing (MergeRequestDiff#raw_diffs → load_diffs).
    raw = await gl.getitem(f"{MR}/changes", {"access_raw_diffs": "true"})
    assert raw["overflow"] is False and len(raw["changes"]) == 1000


async def test_status_checks_are_filtered_by_protected_branch(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.add_status_check(1, "everywhere")
    fake.add_status_check(1, "main-only", protected_branches=["main"])
    fake.add_status_check(1, "release-only", protected_branches=["release/*"])
    fake.add_mr(1, 8, target_branch="release/*")
    fake.add_mr(1, 9, target_branch="release/1.0")
    gl = api(session, fake)
    names = [c["name"] for c in await gl.getitem(f"{MR}/status_checks")]
    assert names == ["everywhere", "main-only"]
    assert list(fake.statuses(1, 8)) == ["everywhere", "release-only"]
    assert list(fake.statuses(1, 9)) == ["everywhere"]  # GitLab compares names exactly
    branches = await gl.getitem("/projects/1/protected_branches")
    assert [b["name"] for b in branches] == ["main", "release/*"]


async def test_retry_only_for_a_failed_check(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    check = fake.add_status_check(1, "lint")
    gl = api(session, fake)
    retry = f"{MR}/status_checks/{check['id']}/retry"
    with pytest.raises(gidgetlab.InvalidField) as error:
        await gl.post(retry, data={})
    assert error.value.status_code == 422
    await post_status(gl, check["id"], fake.mr(1, 7)["sha"], "failed")
    assert await gl.post(retry, data={}) == {"message": "202 Accepted"}
    assert fake.check_status(1, 7, "lint") == "pending"


async def test_pending_turns_failed_after_two_minutes_from_16_6(
    session: aiohttp.ClientSession,
) -> None:
    """The pending row stored when an MR is created times out on 16.6+. The MR !7 of make_fake
    was created before the check existed: it has no row, and its pending never times out."""
    for version, expected in (("16.5.0", "pending"), ("16.6.0", "failed")):
        fake = await make_fake(version)
        fake.add_status_check(1, "lint")
        fake.add_mr(1, 8)
        fake.advance(121)
        assert fake.check_status(1, 8, "lint") == expected
        assert fake.check_status(1, 7, "lint") == "pending"
        await fake.close()


async def test_pending_rows_come_only_from_creation_retry_or_a_posted_pending(
    session: aiohttp.ClientSession,
) -> None:
    """GitLab stores a pending row per check when the MR is created (for that head), on Retry,
    or when someone posts `pending`; 16.6+ times out only stored rows. A push stores nothing, so
    a check nobody answers after a push stays pending for good, and Retry refuses it (422)."""
    fake = FakeGitLab(version="16.6.0")
    await fake.start()
    try:
        fake.add_project(1, "acme/app")
        check = fake.add_status_check(1, "lint")
        head_1, head_2 = sha_for("head-1"), sha_for("head-2")
        fake.add_mr(1, 7, sha=head_1)
        assert [(r.sha, r.status) for r in fake.status_responses(1, 7)] == [(head_1, "pending")]
        assert fake.check_status(1, 7, "lint") == "pending"
        fake.advance(121)
        assert fake.check_status(1, 7, "lint") == "failed"  # the creation row timed out

        fake.push(1, 7, head_2)
        assert len(fake.status_responses(1, 7)) == 1  # a push stores no row
        fake.advance(3600)
        assert fake.check_status(1, 7, "lint") == "pending"  # ...so nothing times out
        gl = api(session, fake)
        retry = f"{MR}/status_checks/{check['id']}/retry"
        with pytest.raises(gidgetlab.InvalidField) as error:
            await gl.post(retry, data={})
        assert error.value.status_code == 422

        await post_status(gl, check["id"], head_2, "pending")
        assert fake.check_status(1, 7, "lint") == "pending"
        fake.advance(121)
        assert fake.check_status(1, 7, "lint") == "failed"  # a posted pending is stored
        assert await gl.post(retry, data={}) == {"message": "202 Accepted"}
        assert fake.check_status(1, 7, "lint") == "pending"
        fake.advance(121)
        assert fake.check_status(1, 7, "lint") == "failed"  # timed out from retried_at
    finally:
        await fake.close()


async def test_unlicensed_and_unauthorised_status_posts(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    check = fake.add_status_check(1, "lint")
    gl = api(session, fake)
    fake.licensed = False
    for attempt in (gl.getitem(f"{MR}/status_checks"), post_status(gl, check["id"], "x")):
        with pytest.raises(gidgetlab.BadRequest) as error:
            await attempt
        assert error.value.status_code == 401
    fake.licensed = True
    fake.can_approve = False
    with pytest.raises(gidgetlab.BadRequest) as error:
        await post_status(gl, check["id"], fake.mr(1, 7)["sha"])
    assert error.value.status_code == 403
    fake.can_approve = True
    with pytest.raises(gidgetlab.BadRequest) as error:
        await post_status(gl, 424242, fake.mr(1, 7)["sha"])
    assert (error.value.status_code, str(error.value)) == (404, "404 Not found")


async def test_managing_external_status_checks(session: aiohttp.ClientSession) -> None:
    fake = await make_fake("17.3.0")
    try:
        gl = api(session, fake)
        branch = fake.add_protected_branch(1, "main")
        created = await gl.post(
            "/projects/1/external_status_checks",
            data={
                "name": "lint",
                "external_url": "http://bot/webhook?check=lint",
                "protected_branch_ids": [branch["id"]],
                "shared_secret": "s3cret",
            },
        )
        assert created["hmac"] is True and "shared_secret" not in created
        assert [b["name"] for b in created["protected_branches"]] == ["main"]
        with pytest.raises(gidgetlab.InvalidField) as error:
            await gl.post(
                "/projects/1/external_status_checks",
                data={"name": "other", "external_url": "http://bot/webhook?check=lint"},
            )
        assert error.value.status_code == 422
        updated = await gl.put(
            f"/projects/1/external_status_checks/{created['id']}", data={"name": "lint2"}
        )
        assert updated["name"] == "lint2"
        assert [c["name"] for c in await gl.getitem("/projects/1/external_status_checks")] == [
            "lint2"
        ]
        await gl.delete(f"/projects/1/external_status_checks/{created['id']}")
        assert await gl.getitem("/projects/1/external_status_checks") == []
    finally:
        await fake.close()


async def test_project_setting_hooks_and_notes(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    project = await gl.put(
        "/projects/1", data={"only_allow_merge_if_all_status_checks_passed": True}
    )
    assert project["only_allow_merge_if_all_status_checks_passed"] is True
    fake.add_status_check(1, "lint")
    assert (await gl.getitem(MR))["detailed_merge_status"] == "status_checks_must_pass"

    hook = await gl.post(
        "/projects/1/hooks",
        data={"url": "http://bot/webhook", "token": "t0ken", "merge_requests_events": True},
    )
    assert hook["merge_requests_events"] is True and hook["push_events"] is True
    assert "token" not in hook
    await gl.put(f"/projects/1/hooks/{hook['id']}", data={"pipeline_events": True})
    hooks = await gl.getitem("/projects/1/hooks")
    assert hooks[0]["pipeline_events"] is True and "token" not in hooks[0]

    note = await gl.post(f"{MR}/notes", data={"body": "**lint**: failed"})
    assert note["author"]["username"] == "status-bot"
    edited = await gl.put(f"{MR}/notes/{note['id']}", data={"body": "**lint**: passed"})
    assert edited["body"] == "**lint**: passed"
    assert (await gl.getitem(f"{MR}/notes"))[0]["id"] == note["id"]
    assert (await gl.getitem("/user"))["id"] == 99


# ---------------------------------------------------------------------------- other MR facts


async def test_approvals_commits_discussions_and_pipelines(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.approve(1, 7, {"id": 3, "username": "carol"})
    fake.set_commits(1, 7, [{"id": sha_for("c2"), "message": "fix: x\n\nSigned-off-by: A <a@x>"}])
    thread = fake.add_discussion(1, 7, "Rename this", resolvable=True)
    fake.set_pipeline(1, 7, "running")
    fake.set_pipeline(1, 7, "success")

    approvals = await gl.getitem(f"{MR}/approvals")
    assert approvals["approved"] is True
    assert [a["user"]["username"] for a in approvals["approved_by"]] == ["carol"]
    commits = await gl.getitem(f"{MR}/commits")
    assert commits[0]["title"] == "fix: x" and "Signed-off-by" in commits[0]["message"]
    discussions = await gl.getitem(f"{MR}/discussions")
    assert discussions[0]["notes"][0]["resolvable"] is True
    assert discussions[0]["notes"][0]["resolved"] is False
    mr = await gl.getitem(MR)
    assert mr["blocking_discussions_resolved"] is False
    assert mr["head_pipeline"]["status"] == "success"
    assert [p["status"] for p in await gl.getitem(f"{MR}/pipelines")] == ["success"]

    fake.resolve_discussion(1, 7, thread["id"])
    fake.unapprove(1, 7, {"id": 3})
    assert (await gl.getitem(MR))["blocking_discussions_resolved"] is True
    assert (await gl.getitem(f"{MR}/approvals"))["approved_by"] == []


async def test_group_members_all_includes_inherited_members(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.add_group(10, "acme", [{"id": 1, "username": "alice"}, {"id": 2, "username": "bob"}])
    fake.add_group(11, "security", [{"id": 3, "username": "carol"}], parent="acme")
    fake.add_group(12, "acme/security/red", [{"id": 4, "username": "dave"}])
    gl = api(session, fake)
    direct = [m["username"] async for m in gl.getiter("/groups/acme%2Fsecurity/members")]
    assert direct == ["carol"]
    everyone = [m["username"] async for m in gl.getiter("/groups/acme%2Fsecurity/members/all")]
    assert sorted(everyone) == ["alice", "bob", "carol"]
    group = await gl.getitem("/groups/11")
    assert group["full_path"] == "acme/security" and group["parent_id"] == 10
    descendants = await gl.getitem("/groups/10/descendant_groups")
    assert [g["full_path"] for g in descendants] == ["acme/security", "acme/security/red"]
    projects = await gl.getitem("/groups/acme/projects", {"include_subgroups": "true"})
    assert [p["path_with_namespace"] for p in projects] == ["acme/app"]


# ---------------------------------------------------------------------------- faults


async def test_fail_with_429_and_retry_after(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.fail(429, retry_after=7, path_contains="/status_checks")
    url = f"{fake.api_url}{MR}/status_checks"
    async with session.get(url, headers=headers(fake)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
    async with session.get(url, headers=headers(fake)) as response:
        assert response.status == 200
    fake.fail(502, method="GET")
    with pytest.raises(gidgetlab.GitLabBroken) as error:
        await api(session, fake).getitem(MR)
    assert error.value.status_code == 502
    assert [c.status for c in fake.calls] == [429, 200, 502]


async def test_dropped_connections_raise_client_errors(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.drop_connections(path_contains="/notes")
    with pytest.raises(aiohttp.ClientError):
        await gl.post(f"{MR}/notes", data={"body": "x"})
    # aiohttp retries an idempotent request once after a disconnect: a GET needs two drops.
    fake.drop_connections(times=1, path_contains=MR)
    assert (await gl.getitem(MR))["iid"] == 7
    fake.drop_connections(times=2, path_contains=MR)
    with pytest.raises(aiohttp.ClientError):
        await gl.getitem(MR)
    assert [c.dropped for c in fake.calls] == [True, True, False, True, True]


async def test_latency_random_failures_and_rate_limit_headers(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.latency = 0.05
    started = time.monotonic()
    await gl.getitem(MR)
    assert time.monotonic() - started >= 0.05
    fake.latency = 0.0

    fake.rate_limit_remaining = 2
    fake.rate_limit_headers_always = True  # GitLab.com-like
    async with session.get(f"{fake.api_url}{MR}", headers=headers(fake)) as response:
        assert response.headers["RateLimit-Remaining"] == "1"
        assert response.headers["RateLimit-Limit"] == "2000"
    fake.rate_limit_headers_always = False  # self-managed: RateLimit-* only on the 429 itself
    async with session.get(f"{fake.api_url}{MR}", headers=headers(fake)) as response:
        assert response.status == 200 and "RateLimit-Remaining" not in response.headers
    async with session.get(f"{fake.api_url}{MR}", headers=headers(fake)) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "60"
        assert response.headers["RateLimit-Remaining"] == "0"
    fake.rate_limit_remaining = None

    fake.fail_randomly(0.5, statuses=(500, 503), seed=3)
    outcomes = []
    for _ in range(20):
        async with session.get(f"{fake.api_url}{MR}", headers=headers(fake)) as response:
            outcomes.append(response.status)
    assert {500, 503, 200} <= set(outcomes)
    fake.fail_randomly(0.0)
    async with session.get(f"{fake.api_url}{MR}", headers=headers(fake)) as response:
        assert response.status == 200


async def test_on_request_acts_mid_flight(fake: FakeGitLab, session: aiohttp.ClientSession) -> None:
    check = fake.add_status_check(1, "lint")
    gl = api(session, fake)
    head = fake.mr(1, 7)["sha"]
    seen: list[Call] = []

    async def push_first(call: Call) -> None:
        seen.append(call)
        fake.push(1, 7, sha_for("head-2"))

    fake.on_request("POST", "/status_check_responses", push_first, times=1)
    with pytest.raises(gidgetlab.BadRequest) as error:
        await post_status(gl, check["id"], head)
    assert error.value.status_code == 409
    assert seen[0].status == 409  # the same Call object, answered after the callback
    await post_status(gl, check["id"], sha_for("head-2"))  # times=1: no second push

    after: list[str] = []
    fake.on_request("GET", MR, lambda call: after.append(fake.mr(1, 7)["sha"]), when="after")
    fake.on_request("GET", MR, lambda call: fake.push(1, 7, sha_for("head-3")), when="after")
    assert (await gl.getitem(MR))["sha"] == sha_for("head-2")
    assert after == [sha_for("head-2")] and fake.mr(1, 7)["sha"] == sha_for("head-3")


async def test_runs_standalone_and_prints_its_url() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakegitlab",
        "--port",
        "0",
        "--seed-mrs",
        "30",
        "--checks",
        "a,b",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as client:
            gl = gidgetlab.aiohttp.GitLabAPI(client, "t", access_token="test-token", url=url)
            mrs = [m async for m in gl.getiter("/projects/1/merge_requests", {"state": "opened"})]
            assert len(mrs) == 30
            checks = await gl.getitem("/projects/acme%2Fapp/merge_requests/1/status_checks")
            assert [(c["name"], c["status"]) for c in checks] == [
                ("a", "pending"),
                ("b", "pending"),
            ]
            async with client.get(f"{url}/_fake/stats") as response:
                assert (await response.json())["calls"] == 3
    finally:
        process.terminate()
        await process.wait()


# --- docs/architecture.md#where-gitlabs-answer-lags-or-is-cut: no kinder than GitLab ---


async def test_head_pipeline_keeps_the_old_heads_pipeline_after_a_push(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.set_pipeline(1, 7, "success")
    old = sha_for("head-1")
    fake.push(1, 7, sha_for("head-2"))
    mr = await gl.getitem(MR)
    assert mr["sha"] == sha_for("head-2")
    assert (mr["head_pipeline"]["sha"], mr["head_pipeline"]["status"]) == (old, "success")
    fake.set_pipeline(1, 7, "running")  # a pipeline for the new head exists: it becomes head
    mr = await gl.getitem(MR)
    assert (mr["head_pipeline"]["sha"], mr["head_pipeline"]["status"]) == (
        sha_for("head-2"),
        "running",
    )


async def test_a_merged_results_pipeline_runs_on_a_merge_commit_of_the_head(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.set_pipeline(1, 7, "success", merged_results=True)
    mr = await gl.getitem(MR)
    pipeline = mr["head_pipeline"]
    assert pipeline["ref"] == "refs/merge-requests/7/merge"
    assert pipeline["sha"] != mr["sha"]
    assert "source_sha" not in pipeline and "_source_sha" not in pipeline
    commit = await gl.getitem(f"/projects/1/repository/commits/{pipeline['sha']}")
    assert commit["parent_ids"][1] == mr["sha"]


async def test_approvals_are_deleted_ten_seconds_after_a_push_without_a_hook(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.approve(1, 7, {"id": 3, "username": "carol"})
    settings = await gl.getitem("/projects/1/approvals")
    assert settings["reset_approvals_on_push"] is True
    fake.push(1, 7, sha_for("head-2"))
    approvals = await gl.getitem(f"{MR}/approvals")
    assert [a["user"]["username"] for a in approvals["approved_by"]] == ["carol"]
    fake.advance(10.0)
    approvals = await gl.getitem(f"{MR}/approvals")
    assert approvals["approved_by"] == []
    fake.approve(1, 7, {"id": 3, "username": "carol"})
    (entry,) = (await gl.getitem(f"{MR}/approvals"))["approved_by"]
    (newest, older) = await gl.getitem(f"{MR}/versions")
    assert newest["head_commit_sha"] == sha_for("head-2")
    assert older["head_commit_sha"] == sha_for("head-1")
    assert entry["approved_at"] > newest["created_at"]


async def test_approved_at_only_from_18_5() -> None:
    fake = await make_fake("18.4.0")
    try:
        fake.approve(1, 7, {"id": 3, "username": "carol"})
        async with aiohttp.ClientSession() as session:
            approvals = await api(session, fake).getitem(f"{MR}/approvals")
        assert approvals["approved_by"] == [{"user": approvals["approved_by"][0]["user"]}]
    finally:
        await fake.close()


async def test_the_date_header_follows_the_fakes_clock(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.advance(3600)
    async with session.get(f"{fake.api_url}/version", headers=headers(fake)) as response:
        shown = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert abs(shown - (time.time() + 3600)) < 5


async def test_diffs_are_cut_at_1000_files_and_collapsed_past_100(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    gl = api(session, fake)
    fake.set_diffs(1, 7, [diff_file(f"f{n}", additions=2) for n in range(1200)])
    mr = await gl.getitem(MR)
    assert mr["changes_count"] == "1000+"
    diffs = [d async for d in gl.getiter(f"{MR}/diffs")]
    assert len(diffs) == 1000
    assert all(d["diff"] for d in diffs[:100]) and not any(d["diff"] for d in diffs[100:])
    assert [d["collapsed"] for d in diffs[99:101]] == [False, True]
    (version, *_) = await gl.getitem(f"{MR}/versions")
    assert (version["state"], version["real_size"]) == ("overflow", "1000+")


async def test_a_big_patch_is_collapsed_and_flagged_only_from_18_4() -> None:
    for version, flagged in (("18.3.0", False), ("18.4.0", True)):
        fake = await make_fake(version)
        try:
            fake.set_diffs(1, 7, [diff_file("big.py", additions=5000), diff_file("small.py")])
            async with aiohttp.ClientSession() as session:
                big, small = await api(session, fake).getitem(f"{MR}/diffs")
            assert big["diff"] == "" and small["diff"].count("\n+") == 1
            assert ("collapsed" in big) is flagged
            if flagged:
                assert (big["collapsed"], small["collapsed"]) == (True, False)
        finally:
            await fake.close()


async def test_members_are_direct_and_members_all_adds_ancestors_and_shared_groups(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.add_group(10, "acme", [{"id": 1, "username": "alice"}])
    fake.add_group(11, "acme/security", [{"id": 3, "username": "carol", "access_level": 20}])
    fake.add_group(12, "contractors", [{"id": 4, "username": "dave", "access_level": 50}])
    fake.share_group(11, 12, access_level=30)
    gl = api(session, fake)
    direct = await gl.getitem("/groups/acme%2Fsecurity/members")
    assert [(m["username"], m["access_level"]) for m in direct] == [("carol", 20)]
    every = await gl.getitem("/groups/acme%2Fsecurity/members/all")
    assert sorted((m["username"], m["access_level"]) for m in every) == [
        ("alice", 30),
        ("carol", 20),
        ("dave", 30),  # capped at the share's access level
    ]


async def test_graphql_diff_stats_cover_the_whole_change(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    fake.set_diffs(1, 7, [diff_file(f"f{n}", additions=3, deletions=1) for n in range(1500)])
    query = (
        "query($fullPath: ID!, $iid: String!) { project(fullPath: $fullPath) {"
        " mergeRequest(iid: $iid) { diffRefs { headSha } diffStats { path additions deletions }"
        " diffStatsSummary { fileCount changes } } } }"
    )
    body = {"query": query, "variables": {"fullPath": "acme/app", "iid": "7"}}
    async with session.post(
        f"{fake.url}/api/graphql", json=body, headers={"Authorization": f"Bearer {fake.token}"}
    ) as response:
        answer = await response.json()
    merge_request = answer["data"]["project"]["mergeRequest"]
    assert merge_request["diffRefs"] == {"headSha": sha_for("head-1")}
    assert len(merge_request["diffStats"]) == 1500
    assert merge_request["diffStats"][0] == {"path": "f0", "additions": 3, "deletions": 1}
    assert merge_request["diffStatsSummary"] == {"fileCount": 1000, "changes": 6000}
    body["query"] = query.replace("diffStats {", "diffStatz {")
    async with session.post(
        f"{fake.url}/api/graphql", json=body, headers={"Authorization": f"Bearer {fake.token}"}
    ) as response:
        assert response.status == 200
        assert "doesn't exist" in (await response.json())["errors"][0]["message"]


async def test_an_approval_given_after_the_push_survives_the_reset_from_17_0() -> None:
    for version, survives in (("16.11.0", False), ("17.0.0", True)):
        fake = await make_fake(version)
        try:
            fake.approve(1, 7, {"id": 3, "username": "carol"})
            fake.push(1, 7, sha_for("head-2"))
            fake.approve(1, 7, {"id": 4, "username": "dave"})  # within the 10 s
            assert fake.true_approvers(1, 7) == (["dave"] if survives else [])
            fake.advance(10.0)
            assert fake.approvers(1, 7) == (["dave"] if survives else [])
        finally:
            await fake.close()


# -- the repository (tests/fakegitlab/repository.py) ---------------------------------------------


async def _get(
    session: aiohttp.ClientSession, fake: FakeGitLab, path: str
) -> tuple[int, Any, dict[str, str]]:
    async with session.get(f"{fake.api_url}{path}", headers=headers(fake)) as resp:
        body = await (resp.json() if resp.content_type == "application/json" else resp.read())
        return resp.status, body, dict(resp.headers)


async def test_repository_branches_trees_and_raw_files_answer_as_gitlab_does(
    fake: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    """Shapes and errors of lib/api/branches.rb, lib/api/repositories.rb and lib/api/files.rb:
    the branch's `commit.id`, a branch name and a file path each one URL-encoded segment, the
    tree's entries (blob id, type, path, mode; folders first) paginated, and the 404s."""
    files = {f".gitlab/status-checks/p{n:02}.yml": f"check: p{n}\n" for n in range(25)}
    sha = fake.commit_files(1, "release/1.0", {**files, ".gitlab/status-checks/t/x.test.yaml": "a"})
    status, branch, _ = await _get(session, fake, "/projects/1/repository/branches/release%2F1.0")
    assert status == 200 and branch["name"] == "release/1.0" and branch["commit"]["id"] == sha
    status, body, _ = await _get(session, fake, "/projects/1/repository/branches/gone")
    assert (status, body) == (404, {"message": "404 Branch Not Found"})

    path = f"/projects/acme%2Fapp/repository/tree?path=.gitlab/status-checks&ref={sha}"
    status, first, head = await _get(session, fake, f"{path}&recursive=true")
    assert status == 200 and len(first) == 20 and head["X-Next-Page"] == "2"
    assert first[0] == {
        "id": first[0]["id"],
        "name": "t",
        "type": "tree",
        "path": ".gitlab/status-checks/t",
        "mode": "040000",
    }
    status, rest, _ = await _get(session, fake, f"{path}&recursive=true&page=2")
    paths = [e["path"] for e in first + rest if e["type"] == "blob"]
    assert paths == [*sorted(files), ".gitlab/status-checks/t/x.test.yaml"]
    status, flat, _ = await _get(session, fake, f"{path}&per_page=100")
    assert ".gitlab/status-checks/t/x.test.yaml" not in [e["path"] for e in flat]
    status, body, _ = await _get(session, fake, f"{path.split('&ref=')[0]}&ref=main")
    assert (status, body) == (404, {"message": "404 invalid revision or path Not Found"})
    status, body, _ = await _get(session, fake, f"{path.split('&ref=')[0]}&ref={'0' * 40}")
    assert (status, body) == (404, {"message": "404 Tree Not Found"})

    raw = "/projects/1/repository/files/.gitlab%2Fstatus-checks%2Fp03.yml/raw"
    status, data, head = await _get(session, fake, f"{raw}?ref=release%2F1.0")
    assert (status, data) == (200, b"check: p3\n")
    assert head["X-Gitlab-Blob-Id"] == next(e["id"] for e in first if e["name"] == "p03.yml")
    status, body, _ = await _get(session, fake, f"{raw}?ref=main")
    assert (status, body) == (404, {"message": "404 File Not Found"})
    status, body, _ = await _get(session, fake, f"{raw}?ref={'0' * 40}")
    assert (status, body) == (404, {"message": "404 Commit Not Found"})


async def test_the_push_hook_payload_has_gitlabs_shape(fake: FakeGitLab) -> None:
    """lib/gitlab/data_builder/push.rb: object_kind push, refs/heads/<branch>, before/after,
    checkout_sha, project_id and project, commits and their count."""
    before = fake.branch_sha(1, "main")
    after = fake.commit_files(1, "main", {"a.txt": "x"})
    payload = fake.push_hook(1, "main", before, after)
    assert {k: payload[k] for k in ("object_kind", "event_name", "ref", "before", "after")} == {
        "object_kind": "push",
        "event_name": "push",
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
    }
    assert payload["checkout_sha"] == after and payload["project_id"] == 1
    assert payload["project"]["path_with_namespace"] == "acme/app"
    assert payload["total_commits_count"] == len(payload["commits"]) == 1

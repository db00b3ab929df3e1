"""The hardened GitLab client against the fake GitLab: what it retries, what it never retries,
and the gidgetlab quirks it guards (a `page` parameter looping forever, an empty 422 body, raw
timeouts)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.gitlab.client import GitLab, GitLabError
from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab

MR = "/projects/1/merge_requests/1"


@pytest.fixture
async def client(gitlab: FakeGitLab) -> AsyncIterator[GitLab]:
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "conventional-title", id=7)
    gitlab.add_mr(1, 1, sha="a" * 40)
    async with aiohttp.ClientSession() as session:
        yield GitLab(session, url=gitlab.url, token=TOKEN, timeout=0.5, max_attempts=3)


async def test_a_page_parameter_cannot_make_pagination_loop_forever(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    for iid in range(2, 151):
        gitlab.add_mr(1, iid, sha=f"{iid:040x}", source_branch=f"b{iid}")
    mrs = await client.get_all("/projects/1/merge_requests", {"page": 2, "state": "opened"})
    assert len(mrs) == 150
    assert len(gitlab.calls_to("GET", "/projects/1/merge_requests")) == 2  # 100 per page


async def test_an_empty_422_body_is_a_gitlab_error_not_an_attribute_error(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    gitlab.fail(422, body=b"", path_contains="status_check_responses")
    with pytest.raises(GitLabError) as caught:
        await client.post_status(1, 1, 7, "a" * 40, "passed")
    assert caught.value.status == 422
    assert len(gitlab.calls_to("POST", "status_check_responses")) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_client_errors_are_never_retried(
    gitlab: FakeGitLab, client: GitLab, status: int
) -> None:
    gitlab.fail(status, times=5)
    with pytest.raises(GitLabError) as caught:
        await client.merge_request(1, 1)
    assert caught.value.status == status
    assert len(gitlab.calls_to("GET", MR)) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_gateway_errors_are_retried_for_reads_and_the_status_post(
    gitlab: FakeGitLab, client: GitLab, status: int
) -> None:
    gitlab.fail(status, times=2)
    assert (await client.merge_request(1, 1))["iid"] == 1
    gitlab.fail(status, times=2, path_contains="status_check_responses")
    await client.post_status(1, 1, 7, "a" * 40, "passed")
    assert [c.status for c in gitlab.calls_to("POST", "status_check_responses")] == [
        status,
        status,
        201,
    ]


async def test_other_posts_are_not_retried(gitlab: FakeGitLab, client: GitLab) -> None:
    gitlab.fail(502, times=1, path_contains="/notes")
    with pytest.raises(GitLabError):
        await client.post(f"{MR}/notes", {"body": "hello"})
    assert len(gitlab.calls_to("POST", "/notes")) == 1


async def test_429_honours_retry_after(gitlab: FakeGitLab, client: GitLab) -> None:
    gitlab.fail(429, times=1, retry_after=1)
    started = time.monotonic()
    assert (await client.merge_request(1, 1))["iid"] == 1
    assert time.monotonic() - started >= 1.0


async def test_503_honours_retry_after_and_a_400_says_which_parameter(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    gitlab.fail(503, times=1, retry_after=1)
    started = time.monotonic()
    assert (await client.merge_request(1, 1))["iid"] == 1
    assert time.monotonic() - started >= 1.0
    with pytest.raises(GitLabError) as caught:  # Grape's {"error": "status is missing"}
        await client.post(f"{MR}/status_check_responses", {"external_status_check_id": 7})
    assert caught.value.status == 400
    assert "status is missing" in caught.value.advice()


async def test_a_timeout_becomes_a_transient_gitlab_error_after_bounded_retries(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    gitlab.delay(0.6, times=10)  # longer than the timeout, over before the fake stops
    async with aiohttp.ClientSession() as session:
        # As the `client` fixture's, with a shorter timeout: three attempts time out sooner.
        impatient = GitLab(session, url=gitlab.url, token=TOKEN, timeout=0.2, max_attempts=3)
        with pytest.raises(GitLabError) as caught:
            await impatient.merge_request(1, 1)
    assert caught.value.status is None and caught.value.transient
    assert "timed out" in caught.value.message
    assert len(gitlab.calls_to("GET", MR)) == 3


async def test_dropped_connections_are_retried(gitlab: FakeGitLab, client: GitLab) -> None:
    gitlab.drop_connections(times=2, path_contains=MR)
    assert (await client.merge_request(1, 1))["iid"] == 1


async def test_a_raw_file_is_read_up_to_a_limit_and_the_rest_left_unread(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    """`raw_file(limit=n)` gives at most n bytes (a caller asks one more than it takes, to
    know a file is larger); the connection it dropped does not trouble the next request, and
    GitLab's errors are still errors."""
    huge = b"x" * 30_000_000
    gitlab.commit_files(1, "main", {"big.yml": huge, "small.yml": b"check: a\n"})
    assert await client.raw_file(1, "big.yml", "main", limit=1001) == b"x" * 1001
    assert await client.raw_file(1, "small.yml", "main", limit=1001) == b"check: a\n"
    assert await client.raw_file(1, "small.yml", "main") == b"check: a\n"
    with pytest.raises(GitLabError) as caught:
        await client.raw_file(1, "missing.yml", "main", limit=1001)
    assert caught.value.status == 404
    assert (await client.merge_request(1, 1))["iid"] == 1

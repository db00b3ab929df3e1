"""Pagination against a hostile GitLab or proxy (issue 10 item 3): the client reads every page of
a list from GitLab's own scheme, host and port only, never sends its token elsewhere, detects a
looping next page at once, and stops at a page cap (logging `pagination_capped`).

The fake GitLab serves the real pages; its `next_link` / `next_page_header` knobs rewrite the
`Link: rel="next"` URL and the `X-Next-Page` header as a hostile proxy would. A second fake
GitLab on another port plays the attacker's server and records whatever reaches it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from bot.gitlab.client import GitLab, GitLabError
from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab

LIST = "/projects/1/merge_requests"


@pytest.fixture
async def evil() -> AsyncIterator[FakeGitLab]:
    fake = FakeGitLab(token=TOKEN)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def seed(gitlab: FakeGitLab, count: int = 250) -> None:
    gitlab.add_project(1, "acme/app")
    for iid in range(1, count + 1):
        gitlab.add_mr(1, iid, sha=f"{iid:040x}", source_branch=f"b{iid}")


def client(gitlab: FakeGitLab, session: aiohttp.ClientSession, **options: object) -> GitLab:
    return GitLab(session, url=gitlab.url, token=TOKEN, timeout=2, max_attempts=1, **options)


def elsewhere(target: str):  # type: ignore[no-untyped-def]
    """A `next_link` knob sending every next link to `target` (same path and query)."""

    def rewrite(honest: str | None, page: int) -> str | None:
        if honest is None:
            return None
        url = URL(honest)
        return str(URL(target).with_path(url.path).with_query(url.query))

    return rewrite


def events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    lines = capsys.readouterr().err.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize("where", ["other-port", "other-host", "other-scheme"])
async def test_next_links_to_another_server_are_not_followed(
    gitlab: FakeGitLab, evil: FakeGitLab, session: aiohttp.ClientSession, where: str
) -> None:
    """Every `rel="next"` points away from GitLab (as a TLS-terminating proxy's `http://` links
    do); `X-Next-Page` is honest: all 250 items are read from GitLab in 3 pages, and nothing,
    least of all the token, reaches the other server."""
    seed(gitlab)
    port = URL(gitlab.url).port
    target = {
        "other-port": evil.url,
        "other-host": f"http://localhost:{URL(evil.url).port}",
        "other-scheme": f"https://127.0.0.1:{port}",
    }[where]
    gitlab.next_link = elsewhere(target)
    async with asyncio.timeout(10):
        items = await client(gitlab, session).get_all(LIST, {"state": "opened"})
    assert len(items) == 250
    assert len({item["iid"] for item in items}) == 250
    assert [c.query.get("page") for c in gitlab.calls_to("GET", LIST)] == [None, "2", "3"]
    assert evil.calls == []


async def test_without_x_next_page_a_foreign_link_is_refused_and_logged(
    gitlab: FakeGitLab,
    evil: FakeGitLab,
    session: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No X-Next-Page (keyset-style) and a next link to another server: the list cannot be read
    safely, so it is an error (never a silently short list), and the token stays home."""
    seed(gitlab)
    gitlab.next_page_header = lambda honest, page: None
    gitlab.next_link = elsewhere(evil.url)
    capsys.readouterr()
    with pytest.raises(GitLabError) as caught:
        await client(gitlab, session).get_all(LIST)
    assert not caught.value.transient
    assert "not followed" in caught.value.message
    assert evil.calls == []
    assert len(gitlab.calls_to("GET", LIST)) == 1
    refused = [e for e in events(capsys) if e["event"] == "pagination_link_refused"]
    assert len(refused) == 1 and TOKEN not in json.dumps(refused)


async def test_without_x_next_page_a_link_on_gitlab_itself_is_followed(
    gitlab: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    seed(gitlab)
    gitlab.next_page_header = lambda honest, page: None
    items = await client(gitlab, session).get_all(LIST)
    assert len(items) == 250
    assert len(gitlab.calls_to("GET", LIST)) == 3


async def test_a_looping_next_page_is_detected_at_once(
    gitlab: FakeGitLab, session: aiohttp.ClientSession
) -> None:
    """Both X-Next-Page and the next link say "page 2" forever (on GitLab's own host): the
    client notices the loop on the third page instead of making thousands of requests."""
    seed(gitlab)
    gitlab.next_page_header = lambda honest, page: "2"
    gitlab.next_link = lambda honest, page: f"{gitlab.url}/api/v4{LIST}?page=2&per_page=100"
    with pytest.raises(GitLabError) as caught:
        async with asyncio.timeout(5):
            await client(gitlab, session).get_all(LIST)
    assert not caught.value.transient
    assert "does not advance" in caught.value.message
    assert len(gitlab.calls_to("GET", LIST)) <= 3


async def test_an_endless_list_stops_at_the_page_cap(
    gitlab: FakeGitLab, session: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pages that always have a next one (advancing, on GitLab's host): the client stops at its
    cap (5 here; 500 by default) with an error and one `pagination_capped` log event."""
    seed(gitlab)
    gitlab.next_page_header = lambda honest, page: str(page + 1)
    gitlab.next_link = lambda honest, page: (
        f"{gitlab.url}/api/v4{LIST}?page={page + 1}&per_page=100"
    )
    capsys.readouterr()
    with pytest.raises(GitLabError) as caught:
        async with asyncio.timeout(5):
            await client(gitlab, session, max_pages=5).get_all(LIST)
    assert not caught.value.transient
    assert "more than 5 pages" in caught.value.message
    assert len(gitlab.calls_to("GET", LIST)) == 5
    capped = [e for e in events(capsys) if e["event"] == "pagination_capped"]
    assert len(capped) == 1
    assert capped[0]["pages"] == 5

"""compat.py reads what each GitLab version sends: the fake GitLab, set to versions 14.5 through
18.9, answers over HTTP through the bot's client, and compat's readings must agree with the
version the fake plays."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.gitlab import compat
from bot.gitlab.client import GitLab
from bot.gitlab.compat import Version
from tests.builders import seed_mr
from tests.conftest import TOKEN
from tests.fakegitlab import FakeGitLab

VERSIONS = ["14.5.0", "15.2.0", "15.6.0", "16.3.0", "17.0.0", "18.9.0"]


@pytest.fixture(params=VERSIONS)
async def client(gitlab: FakeGitLab, request: pytest.FixtureRequest) -> AsyncIterator[GitLab]:
    gitlab.version = request.param
    seed_mr(gitlab, iid=1, draft=True, pipeline="running")
    seed_mr(gitlab, iid=2, title="feat: ready")
    async with aiohttp.ClientSession() as session:
        yield GitLab(session, url=gitlab.url, token=TOKEN, max_attempts=1)


async def test_the_version_gitlab_says_is_the_version_the_bot_detects(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    expected = Version.parse(gitlab.version)
    assert expected is not None
    assert await client.detect_version() == expected
    assert client.known_reports_failures is compat.reports_failures(expected)
    assert compat.reports_failures(expected) is (expected >= Version(15, 0))


async def test_draft_pipeline_and_path_are_read_from_every_versions_mr(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    draft, ready = await client.merge_request(1, 1), await client.merge_request(1, 2)
    assert (compat.draft_of(draft), compat.draft_of(ready)) == (True, False)
    assert ("draft" in draft) is gitlab.at_least(15, 0)  # `work_in_progress` before
    pipeline = compat.head_pipeline_of(draft)
    assert pipeline is not None and pipeline["status"] == "running"
    assert compat.head_pipeline_of(ready) is None
    assert compat.project_path_of(draft, None) == "acme/app"
    assert compat.project_path_of({"web_url": draft["web_url"]}, None) == "acme/app"


async def test_an_mr_alone_tells_whether_failures_can_be_shown_from_15_6(
    gitlab: FakeGitLab, client: GitLab
) -> None:
    mr = await client.merge_request(1, 1)
    told = compat.failures_shown_by(["pending"], mr)
    assert told == (
        (True, "the merge request shows detailed_merge_status") if gitlab.at_least(15, 6) else None
    )
    # What the listed checks show tells on every version.
    assert compat.failures_shown_by(["approved"], mr) == (
        False,
        "a status check listed as approved",
    )
    assert compat.failures_shown_by(["failed"], None) == (
        True,
        "a status check listed as passed or failed",
    )

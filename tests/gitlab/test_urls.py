"""The GitLab client builds request URLs without gidgetlab's per-request urljoin/urlparse, and
gets the very same URLs gidgetlab would."""

from __future__ import annotations

from typing import Any

import aiohttp
import gidgetlab.abc
import pytest

from bot.gitlab.client import GitLab, project_ref

PATHS = [
    "/version",
    "/user",
    f"/projects/{project_ref('acme/app')}/merge_requests/5",
    f"/projects/{project_ref('grp/sub group/ä')}/merge_requests/5/diffs",
    "/projects/17/merge_requests/5/status_check_responses",
    f"/groups/{project_ref('acme/security')}/members/all",
    "/projects/1/merge_requests",
    # Not built by the client itself, but callers may pass them: gidgetlab's way decides.
    "projects/1/merge_requests",
    "/projects/1/merge_requests?state=opened",
    "/projects/./../1",
    "/projects//1",
    "/projects/1/notes#x",
    "http://gitlab.test/api/v4/projects/1/merge_requests?page=2&per_page=100",
    "https://other.example/api/v4/projects/1/merge_requests/5/diffs?page=3",
]
PARAMS: list[dict[str, Any]] = [
    {},
    {"per_page": 100},
    {"state": "opened", "source_branch": "feature/a b&c=d"},
    {"per_page": 100, "sort": "asc", "flag": True},
    {"labels": ["a", "b"]},
]


@pytest.mark.parametrize("base", ["http://gitlab.test", "http://gitlab.test/sub/path/"])
async def test_request_urls_are_the_ones_gidgetlab_builds(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        api = GitLab(session, url=base, token="t").api
        for path in PATHS:
            for params in PARAMS:
                ours = api.format_url(path, params)
                theirs = gidgetlab.abc.GitLabAPI.format_url(api, path, params)
                assert ours == theirs, (path, params)

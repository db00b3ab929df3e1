"""The details page over HTTP (no browser): signed links, the JSON variant, escaping, GitLab down.
The browser test is in test_details_browser.py, the `link` command in tests/cli/test_link.py."""

from __future__ import annotations

import time
from typing import Any

from tests import payloads
from tests.builders import running_pipeline, seed_mr
from tests.conftest import Bot, get, link
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40
SHA2 = "2" * 40


def seed(gitlab: FakeGitLab, title: str = "feat: add login") -> None:
    """acme/app!1: the title check passes, the pipeline check fails (running), one foreign check."""
    checks = ("conventional-title", "pipeline-green", "someone-elses-check")
    seed_mr(gitlab, checks, sha=SHA, title=title, head_pipeline=running_pipeline(SHA))


async def evaluated(gitlab: FakeGitLab, bot: Bot, **seed_args: Any) -> None:
    seed(gitlab, **seed_args)
    status, _ = await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
    assert status == 202
    await bot.settle()


async def test_json_shows_each_check_its_verdict_tree_and_history(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    await evaluated(gitlab, bot)
    status, view, headers = await get(bot, link(bot, json=True))
    assert status == 200, view
    assert headers["Referrer-Policy"] == "no-referrer"
    assert view["project_id"] == 1 and view["iid"] == 1
    assert view["project_path"] == "acme/app" and view["title"] == "feat: add login"
    assert view["head_sha"] == SHA and view["gitlab_problems"] == []
    checks = {c["check"]: c for c in view["checks"]}
    assert list(checks) == ["conventional-title", "pipeline-green", "someone-elses-check"]

    pipeline = checks["pipeline-green"]
    assert pipeline["gitlab_status"] == "failed"
    verdict = pipeline["verdict"]
    assert verdict["verdict"] == "failed" and verdict["current"] is True and verdict["sha"] == SHA
    (rule,) = verdict["outcome"]["children"]
    assert rule["passed"] is False and "running" in rule["evidence"]
    assert rule["fix"]  # what would make it pass
    assert checks["conventional-title"]["verdict"]["verdict"] == "passed"
    assert checks["someone-elses-check"]["verdict"] is None
    assert "no policy" in checks["someone-elses-check"]["note"]
    assert sorted((h["check"], h["action"]) for h in view["history"]) == [
        ("conventional-title", "posted"),
        ("pipeline-green", "posted"),
    ]

    # The head moves and nothing is evaluated yet: the recorded verdicts are stale, and say so.
    gitlab.push(1, 1, SHA2)
    _, view, _ = await get(bot, link(bot, json=True))
    assert view["head_sha"] == SHA2
    assert {c["check"]: c["verdict"]["current"] for c in view["checks"] if c["verdict"]} == {
        "conventional-title": False,
        "pipeline-green": False,
    }
    _, html, _ = await get(bot, link(bot))
    assert "Stale: judged for commit" in html


async def test_links_that_are_unsigned_expired_or_for_another_mr_get_403(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    await evaluated(gitlab, bot)
    good = link(bot)
    path, query = good.split("?", 1)
    expired = link(bot, now=time.time() - 3600, ttl=60)
    other_mr = link(bot, 1, 2).split("?", 1)[1]
    forged = good[:-4] + ("0000" if not good.endswith("0000") else "1111")
    bad = [
        bot.url + "/mr/1/1",
        expired,
        f"{path}?{other_mr}",
        forged,
        f"{path}?sig={query.split('sig=')[1]}",  # no expiry
        f"{path}?expires=soon&sig=abc",
    ]
    for url in bad:
        status, body, _ = await get(bot, url)
        assert status == 403, url
        assert "not signed or has expired" in body
        assert "acme/app" not in body and "running" not in body
    status, body, _ = await get(bot, bad[1].replace("/mr/1/1?", "/mr/1/1.json?"))
    assert status == 403 and "not signed or has expired" in body["error"]
    assert (await get(bot, good))[0] == 200
    # A GitLab call is made only for a valid link.
    gitlab.reset_calls()
    await get(bot, bad[0])
    assert gitlab.calls == []


async def test_titles_and_evidence_are_escaped(gitlab: FakeGitLab, bot: Bot) -> None:
    title = "<script>alert('pwned')</script> & <b>bold</b>"
    await evaluated(gitlab, bot, title=title)
    status, html, headers = await get(bot, link(bot))
    assert status == 200
    assert "<script>" not in html and "<b>bold" not in html
    escaped = "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
    assert escaped in html
    # And should anything slip through, the browser runs no script on this page.
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    # The title rule's evidence quotes the title: escaped there too, and it failed.
    _, view, _ = await get(bot, link(bot, json=True))
    title_check = next(c for c in view["checks"] if c["check"] == "conventional-title")
    assert title_check["verdict"]["verdict"] == "failed"
    assert html.count("&lt;script&gt;") >= 2


async def test_the_record_is_shown_when_gitlab_cannot_be_read(gitlab: FakeGitLab, bot: Bot) -> None:
    await evaluated(gitlab, bot)
    # GitLab fails every read of the MR for good. A 503 asking to come back at once (Retry-After:
    # 0) is retried without the backoff a 500 waits out: the same failure, seconds sooner.
    gitlab.fail(503, times=100, retry_after=0, path_contains="/merge_requests/1")
    status, view, _ = await get(bot, link(bot, json=True))
    assert status == 200
    assert view["head_sha"] is None
    assert any("could not read the merge request" in p for p in view["gitlab_problems"])
    checks = {c["check"]: c["verdict"] for c in view["checks"]}
    assert checks["pipeline-green"]["verdict"] == "failed"
    assert checks["pipeline-green"]["current"] is None  # unknown, not claimed current
    status, html, _ = await get(bot, link(bot))
    assert status == 200 and "could not be confirmed" in html and "pipeline-green" in html


async def test_an_mr_nobody_knows_renders_with_a_note_not_an_error(bot: Bot) -> None:
    status, view, _ = await get(bot, link(bot, 5, 99, json=True))
    assert status == 200
    assert view["checks"] == [] and view["history"] == []
    assert any("404" in p for p in view["gitlab_problems"])
    status, html, _ = await get(bot, link(bot, 5, 99))
    assert status == 200 and "Nothing is known" in html
    async with bot.session.get(bot.url + "/mr/abc/1") as resp:
        assert resp.status == 404

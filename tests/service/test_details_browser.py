"""The details page in a real headless browser: Debian's chromium driven by Playwright.

.ci/run installs chromium; on a developer machine without it this test is skipped (in CI it fails).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.service.app import RECORD
from bot.service.details import LINK_KEY
from bot.service.links import signed_link
from tests import payloads
from tests.conftest import Bot
from tests.fakegitlab import FakeGitLab

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHA = "3" * 40


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_the_page_shows_the_failing_rules_evidence_and_refuses_bad_links(
    gitlab: FakeGitLab, bot: Bot, browser: Any, tmp_path: Path
) -> None:
    gitlab.add_project(1, "acme/app")
    gitlab.add_mr(
        1,
        42,
        sha=SHA,
        title="feat: <b>login</b> page",
        source_branch="feature",
        target_branch="main",
        head_pipeline={"id": 9, "sha": SHA, "status": "failed"},
    )
    gitlab.add_status_check(1, "conventional-title")
    gitlab.add_status_check(1, "pipeline-green")
    status, _ = await bot.deliver(payloads.merge_request_hook(iid=42, sha=SHA, action="open"))
    assert status == 202
    await bot.settle()
    assert gitlab.check_status(1, 42, "pipeline-green") == "failed"
    latest = {row["check"]: row for row in await bot.app[RECORD].latest(1, 42)}
    (failing_rule,) = latest["pipeline-green"]["outcome"]["children"]
    evidence = failing_rule["evidence"]  # what the policy saw, e.g. "the pipeline is failed, ..."
    assert "failed" in evidence

    key = bot.app[LINK_KEY]
    page = await browser.new_page()
    response = await page.goto(signed_link(key, 1, 42, ttl=300, base_url=bot.url))
    assert response is not None and response.status == 200
    check = page.locator("article.check.failed", has_text="pipeline-green")
    assert await check.count() == 1
    shown = await check.locator("li.fail .evidence").all_inner_texts()
    assert evidence in shown
    assert failing_rule["fix"] in await check.inner_text()  # what would make it pass
    assert "Judged for the current head" in await check.inner_text()
    # The title is user input: rendered as text, never as markup.
    assert await page.locator("h1 .title").inner_text() == "feat: <b>login</b> page"
    assert await page.locator("h1 b").count() == 0
    history = await page.locator("#history tbody tr").all_inner_texts()
    assert any("pipeline-green" in row and "posted" in row for row in history)
    # The summary comes first, then the failing check: what a reader needs before scrolling.
    assert await page.locator("p.summary").inner_text() == "1 of 2 checks failing"
    first = page.locator("article.check").first
    assert "pipeline-green" in await first.inner_text()
    shot = tmp_path / "details.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2000

    for url in (
        f"{bot.url}/mr/1/42",  # unsigned
        signed_link(key, 1, 42, ttl=60, now=time.time() - 3600, base_url=bot.url),  # expired
    ):
        response = await page.goto(url)
        assert response is not None and response.status == 403, url
        assert "not signed or has expired" in await page.inner_text("body")
        assert evidence not in await page.content()

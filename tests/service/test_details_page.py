"""The details page, `history` and `link` as people read them (issue 11 item 9): a summary line
on top and failing checks first; code spans as code, never literal backticks; "the only rule
holds"; a not-applicable check without a red mark; `history` in aligned columns under a header;
`link` absolute with PUBLIC_URL, and one line saying how to get one without it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bot.service.app import RECORD
from bot.service.details import LINK_KEY
from bot.service.links import signed_link
from tests import payloads
from tests.conftest import Bot, write_policies
from tests.fakegitlab import FakeGitLab
from tests.processes import run_bot as bot_command

REPO = Path(__file__).resolve().parents[2]
SHA = "7" * 40
POLICIES = {
    "title.yml": "check: conventional-title\nrequire:\n  - title: '^(feat|fix): '\n",
    "pipeline.yml": "check: pipeline-green\nrequire:\n  - pipeline: success\n",
    "draft.yml": "check: ready\nrequire:\n  - draft: false\n",
    "release.yml": """\
        check: release-notes
        applies_to: {target_branches: ["release/*"]}
        require:
          - labels: {any: [release-notes]}
    """,
}
CHECKS = ["ready", "release-notes", "conventional-title", "someone-elses-check", "pipeline-green"]


class Page(HTMLParser):
    """The articles of the page (class, text, marks' classes) and its visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.articles: list[dict[str, Any]] = []
        self.summary: str | None = None
        self._in: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "article":
            self.articles.append({"class": classes, "text": "", "rows": []})
        if tag == "li" and self.articles and "tree" in self._in:
            self.articles[-1]["rows"].append(classes)
        if tag not in ("meta", "br"):
            self._in.append(
                "summary" if "summary" in classes else "tree" if "tree" in classes else tag
            )

    def handle_endtag(self, tag: str) -> None:
        if self._in:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if "style" in self._in or "title" in self._in:
            return
        self.text.append(data)
        if "summary" in self._in:
            self.summary = (self.summary or "") + data
        if self.articles and "article" in self._in:
            self.articles[-1]["text"] += data

    def check(self, name: str) -> dict[str, Any]:
        (found,) = [a for a in self.articles if a["text"].split()[1:2] == [name]]
        return found


async def seeded_bot(gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path) -> Bot:
    gitlab.add_project(1, "acme/app")
    for name in CHECKS:
        gitlab.add_status_check(1, name)
    gitlab.add_mr(
        1,
        1,
        sha=SHA,
        title="Add login",
        target_branch="main",
        head_pipeline={"id": 4, "sha": SHA, "status": "running"},
    )
    bot = await start_bot(policy_dir=write_policies(tmp_path / "page-policies", POLICIES))
    assert (await bot.deliver(payloads.merge_request_hook(sha=SHA)))[0] == 202
    await bot.settle()
    await bot.app[RECORD].flush()
    return bot


async def test_the_page_sums_up_lists_failing_first_and_shows_code_as_code(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await seeded_bot(gitlab, start_bot, tmp_path)
    async with bot.session.get(bot.url + signed_link(bot.app[LINK_KEY], 1, 1, ttl=300)) as resp:
        html = await resp.text()
    page = Page(html)

    assert page.summary == "2 of 5 checks failing"
    assert html.index('<p class="summary') < html.index("<article")
    order = [a["text"].split()[1] for a in page.articles]
    assert order == [
        "conventional-title",
        "pipeline-green",
        "ready",
        "release-notes",
        "someone-elses-check",
    ]

    # No literal backticks: the policy's regex is code on the page.
    assert "`" not in "".join(page.text)
    title = page.check("conventional-title")
    assert "<code>^(feat|fix): </code>" in html
    assert 'title: "Add login" does not match ^(feat|fix):' in " ".join(title["text"].split())

    # Grammar: one rule is "the only rule", never "all 1 rule".
    assert "the only rule holds" in page.check("ready")["text"]
    assert "all 1 rule" not in html

    # Not applicable: a green badge, and no red ✗ under it.
    release = page.check("release-notes")
    assert "passed" in release["class"]
    assert release["rows"] == [["not-applicable"]]
    assert "✗" not in release["text"] and "○" in release["text"]


async def test_history_prints_aligned_columns_under_a_header(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await seeded_bot(gitlab, start_bot, tmp_path)
    result = await asyncio.to_thread(
        bot_command, "history", "acme/app!1", STATE_DIR=bot.settings.state_dir
    )
    assert (result.returncode, result.stderr) == (0, "")
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TIME", "(UTC)", "COMMIT", "CHECK", "VERDICT", "ACTION", "REASON"]
    assert len(rows) == 4  # the four policies; the foreign check has no decision
    columns = [header.index(name) for name in ("COMMIT", "CHECK", "VERDICT", "ACTION", "REASON")]
    for row in rows:
        for start in columns:
            assert row[start - 2 : start] == "  " and row[start] != " ", (row, start)
        assert row[columns[0] :].startswith(SHA[:8])
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +$", row[: columns[0]])
    by_check = {row[columns[1] :].split()[0]: row for row in rows}
    assert set(by_check) == {"conventional-title", "pipeline-green", "ready", "release-notes"}
    title = by_check["conventional-title"]
    assert title[columns[2] :].split()[:2] == ["failed", "posted"]
    assert title[columns[4] :] == 'title: "Add login" does not match ^(feat|fix): '  # no backticks


def test_link_is_absolute_with_public_url_and_says_how_to_get_one_without(
    tmp_path: Path,
) -> None:
    absolute = bot_command(
        "link",
        "17!42",
        LINK_SECRET="s3cret",
        PUBLIC_URL="https://bot.example.com/",
        STATE_DIR=tmp_path,
    )
    assert absolute.returncode == 0 and absolute.stderr == ""
    assert re.fullmatch(
        r"https://bot\.example\.com/mr/17/42\?expires=\d+&sig=[0-9a-f]+\n", absolute.stdout
    )
    relative = bot_command("link", "17!42", LINK_SECRET="s3cret", STATE_DIR=tmp_path)
    assert (relative.returncode, relative.stdout) == (2, "")
    assert relative.stderr == (
        "error: PUBLIC_URL is not set, so there is no address to link to: set it as the server "
        "has it (the bot's address as people reach it, e.g. PUBLIC_URL=https://bot.example.com)\n"
    )

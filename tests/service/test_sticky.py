"""The sticky MR note against the fake GitLab: one per MR, edited on change, never re-posted."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.service.app import QUEUE, STICKY
from bot.service.links import verify
from bot.service.sticky import MARKER, code, render_body
from tests import builders, payloads
from tests.builders import policy_from, running_pipeline, seed_mr
from tests.conftest import Bot, write_policies
from tests.fakegitlab import Call, FakeGitLab

SHA = "1" * 40
NOTES = "/merge_requests/1/notes"

TITLE = """
    check: conventional-title
    description: 'Titles read like "feat: add login".'
    comment: {mode}
    require:
      - name: conventional title
        title: '^(feat|fix|docs|chore)(\\(.+\\))?: '
"""
PIPELINE = """
    check: pipeline-green
    require:
      - pipeline: success
"""


def seed(gitlab: FakeGitLab, title: str = "Add login") -> None:
    checks = ("conventional-title", "pipeline-green")
    seed_mr(gitlab, checks, sha=SHA, title=title, head_pipeline=running_pipeline(SHA))


def policies(tmp_path: Path, mode: str = "on_failure") -> Path:
    return write_policies(
        tmp_path / f"policies-{mode}",
        {"title.yml": TITLE.format(mode=mode), "pipeline.yml": PIPELINE},
    )


def writes(gitlab: FakeGitLab) -> tuple[list[Call], list[Call]]:
    """The note POSTs and PUTs GitLab accepted."""
    posts = [c for c in gitlab.calls_to("POST", NOTES) if c.status == 201]
    puts = [c for c in gitlab.calls_to("PUT", NOTES) if c.status == 200]
    return posts, puts


def notes_on_mr(gitlab: FakeGitLab) -> list[dict[str, Any]]:
    return [n for d in gitlab.projects[1].mrs[1].discussions for n in d["notes"]]


async def evaluate_mr(bot: Bot) -> None:
    status, body = await bot.deliver(payloads.merge_request_hook(sha=SHA))
    assert status == 202, body
    await bot.settle()


async def test_note_is_created_once_edited_on_change_and_left_alone_when_unchanged(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab)
    bot = await start_bot(policy_dir=policies(tmp_path))
    await evaluate_mr(bot)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (1, 0)
    body = posts[0].json["body"]
    assert body.startswith(MARKER)
    assert "`conventional-title` fails" in body
    assert 'title: "Add login" does not match' in body  # the evidence
    assert "**To pass:** `change the title to match ^(feat" in body  # what would make it pass
    assert 'Titles read like "feat: add login".' in body
    assert "pipeline-green" not in body  # that policy does not comment
    assert "/mr/" not in body  # no PUBLIC_URL: no link

    # Evaluated again with the same verdict: no POST, no PUT (and no need to re-read notes).
    gitlab.reset_calls()
    await evaluate_mr(bot)
    await evaluate_mr(bot)
    assert writes(gitlab) == ([], [])
    assert gitlab.calls_to("GET", NOTES) == []

    # The verdict changes: the same note is edited in place and says it passes now.
    gitlab.update_mr(1, 1, title="feat: add login")
    await evaluate_mr(bot)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (0, 1)
    assert puts[0].path.endswith(f"/notes/{notes_on_mr(gitlab)[0]['id']}")
    assert "passes now" in puts[0].json["body"]
    assert "fails" not in puts[0].json["body"]
    assert len(notes_on_mr(gitlab)) == 1

    # And unchanged again: nothing.
    gitlab.reset_calls()
    await evaluate_mr(bot)
    assert writes(gitlab) == ([], [])


async def test_after_a_restart_the_note_is_found_not_reposted(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab)
    # Someone else's comment quoting the marker is not the bot's note.
    gitlab.add_note(1, 1, f"{MARKER} digest=0 -->\nfake", author={"id": 7, "username": "sam"})
    folder = policies(tmp_path)
    first = await start_bot(policy_dir=folder)
    await evaluate_mr(first)
    assert len(writes(gitlab)[0]) == 1

    gitlab.reset_calls()
    # A new process knows nothing of the note; its start-up sweep (the project is remembered in
    # the state dir) or the next delivery finds it by reading the notes once.
    second = await start_bot(policy_dir=folder)
    await evaluate_mr(second)
    assert writes(gitlab) == ([], [])
    assert len(gitlab.calls_to("GET", NOTES)) == 1

    gitlab.update_mr(1, 1, title="Add login and logout")  # still failing, different evidence
    await evaluate_mr(second)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (0, 1)
    ours = [n for n in notes_on_mr(gitlab) if n["author"]["id"] == gitlab.user["id"]]
    assert len(ours) == 1 and "Add login and logout" in ours[0]["body"]
    assert puts[0].path.endswith(f"/notes/{ours[0]['id']}")


async def test_on_failure_writes_nothing_while_the_check_passes(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, title="feat: add login")
    bot = await start_bot(policy_dir=policies(tmp_path))
    await evaluate_mr(bot)
    await evaluate_mr(bot)
    assert writes(gitlab) == ([], [])
    assert len(gitlab.calls_to("GET", NOTES)) == 1  # looked once for a note from before


async def test_policies_without_comment_never_touch_notes(gitlab: FakeGitLab, bot: Bot) -> None:
    seed(gitlab)  # the default policies have no `comment:`
    await evaluate_mr(bot)
    assert gitlab.check_status(1, 1, "conventional-title") == "failed"
    assert gitlab.calls_to("*", "/notes") == []
    assert gitlab.calls_to("GET", "/user") == []


async def test_always_comments_on_a_pass_too(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, title="feat: add login")
    bot = await start_bot(policy_dir=policies(tmp_path, "always"))
    await evaluate_mr(bot)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (1, 0)
    assert "`conventional-title` passes" in posts[0].json["body"]
    gitlab.reset_calls()
    await evaluate_mr(bot)
    assert writes(gitlab) == ([], [])


async def test_note_links_to_the_details_page_with_a_valid_signature(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab)
    bot = await start_bot(
        policy_dir=policies(tmp_path),
        public_url="https://bot.example.com",
        link_secret="link-secret-for-tests",
    )
    await evaluate_mr(bot)
    body = writes(gitlab)[0][0].json["body"]
    link = re.search(r"\((https://bot\.example\.com/mr/1/1\?[^)]+)\)", body)
    assert link is not None, body
    query = parse_qs(urlsplit(link[1]).query)
    key = b"link-secret-for-tests"
    assert verify(key, "/mr/1/1", query["expires"][0], query["sig"][0])
    assert not verify(key, "/mr/1/2", query["expires"][0], query["sig"][0])

    # A fresh signature alone never edits the note...
    gitlab.reset_calls()
    await evaluate_mr(bot)
    assert writes(gitlab) == ([], [])
    # ...until the link has less than half its lifetime left: then it is re-signed once.
    sticky = bot.app[STICKY]
    sticky.clock = lambda: time.time() + bot.settings.link_ttl * 0.6
    await evaluate_mr(bot)
    await evaluate_mr(bot)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (0, 1)


async def test_a_deleted_note_is_written_anew(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab)
    bot = await start_bot(policy_dir=policies(tmp_path))
    await evaluate_mr(bot)
    note_id = notes_on_mr(gitlab)[0]["id"]
    url = f"{gitlab.api_url}/projects/1/merge_requests/1/notes/{note_id}"
    async with bot.session.delete(url, headers={"PRIVATE-TOKEN": gitlab.token}) as resp:
        assert resp.status == 204
    gitlab.update_mr(1, 1, title="Add login and logout")
    await evaluate_mr(bot)
    assert len(notes_on_mr(gitlab)) == 1
    assert "Add login and logout" in notes_on_mr(gitlab)[0]["body"]


async def test_note_errors_are_logged_once_and_never_break_the_evaluation(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(gitlab)
    gitlab.fail(403, times=100, path_contains="/notes")
    bot = await start_bot(policy_dir=policies(tmp_path))
    await evaluate_mr(bot)
    gitlab.update_mr(1, 1, title="feat: add login")
    await evaluate_mr(bot)
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    events = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    errors = [e for e in events if e["event"] == "note_failed" and e["level"] == "error"]
    assert len(errors) == 1
    assert "403" in errors[0]["advice"]
    assert not [e for e in events if e["event"] == "evaluation_listener_failed"]


async def test_the_bots_own_note_does_not_trigger_an_evaluation(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab)
    bot = await start_bot(policy_dir=policies(tmp_path))
    await evaluate_mr(bot)
    note = writes(gitlab)[0][0].response
    evaluations = bot.app[QUEUE].evaluations
    hook = payloads.note_hook(note=note["body"])
    hook["object_attributes"]["author_id"] = note["author"]["id"]
    hook["user"] = note["author"]
    status, body = await bot.deliver(hook, event="Note Hook")
    assert (status, body["status"]) == (200, "ignored")
    await bot.settle()
    assert bot.app[QUEUE].evaluations == evaluations


# -- rendering ------------------------------------------------------------------------------


def test_user_text_in_the_note_is_inert_markdown() -> None:
    hostile = "@all `rm` <img src=x onerror=alert(1)> **bold** #1 !2 [x](javascript:y)"
    policy = policy_from(TITLE.format(mode="on_failure"))
    decision = builders.decision(policy, facts={"title": hostile})
    body = render_body([decision])
    evidence = next(line for line in body.splitlines() if line.startswith("- ✗ "))
    # The whole evidence is one code span with a fence longer than any backtick run inside.
    fence = re.match(r"- ✗ (`+)", evidence)[1]  # type: ignore[index]
    assert evidence.endswith(fence) and fence not in evidence[4 + len(fence) : -len(fence)]
    outside_code = re.sub(r"(`+).*?\1", "", body, flags=re.S)
    for dangerous in ("@all", "<img", "#1", "!2", "javascript:"):
        assert dangerous not in outside_code


def test_code_spans() -> None:
    assert code("plain") == "`plain`"
    assert code("a `b` c") == "``a `b` c``"
    assert code("`edge`") == "`` `edge` ``"
    assert code("two\nlines") == "`two lines`"
    assert code("") == "`(empty)`"
    assert len(code("x" * 5000)) < 320


def test_same_verdicts_render_the_same_body() -> None:
    policy = policy_from(TITLE.format(mode="always"))
    one = builders.decision(policy, facts={"title": "Add login"})
    two = builders.decision(policy_from(TITLE.format(mode="always")), facts={"title": "Add login"})
    assert render_body([one]) == render_body([two])
    other = builders.decision(policy, facts={"title": "Add logout"})
    assert render_body([one]) != render_body([other])


async def test_passing_checks_gitlab_already_shows_cost_no_note_reads_after_a_restart(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, title="feat: add login")
    folder = policies(tmp_path)
    first = await start_bot(policy_dir=folder)
    await evaluate_mr(first)
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    gitlab.reset_calls()
    second = await start_bot(policy_dir=folder)  # knows nothing of notes
    await evaluate_mr(second)
    # GitLab already shows the pass: nothing can be stale in a note, so none is looked for.
    assert gitlab.calls_to("GET", NOTES) == []
    assert gitlab.calls_to("GET", "/user") == []


@pytest.mark.parametrize(
    "title",
    [
        "Add login ?expires=99999999999",
        "[x](/mr/1/1?expires=99999999999)",
        "digest=0 expires=99999999999 -->",
    ],
    ids=["query", "fake-details-link", "fake-marker-tail"],
)
async def test_after_a_restart_the_links_expiry_comes_from_the_bots_marker_not_the_title(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path, title: str
) -> None:
    """Issue 10 item 6: an MR title quoting `expires=` (shown in the note's evidence) must not
    pass for the expiry of the note's link: after a restart the bot still re-signs a link that
    has less than half its lifetime left."""
    seed(gitlab, title=title)
    settings = {
        "policy_dir": policies(tmp_path),
        "public_url": "https://bot.example.com",
        "link_secret": "link-secret-for-tests",
    }
    first = await start_bot(**settings)
    await evaluate_mr(first)
    assert len(writes(gitlab)[0]) == 1
    assert "99999999999" in notes_on_mr(gitlab)[0]["body"]  # the title is quoted in the note
    await first.stop()

    gitlab.reset_calls()
    second = await start_bot(**settings)  # knows nothing of the note: it reads it back
    second.app[STICKY].clock = lambda: time.time() + second.settings.link_ttl * 0.6
    await evaluate_mr(second)
    posts, puts = writes(gitlab)
    assert (len(posts), len(puts)) == (0, 1), "the ageing link was re-signed"
    link = re.search(r"\((https://bot\.example\.com/mr/1/1\?[^)]+)\)", puts[0].json["body"])
    assert link is not None
    expires = int(parse_qs(urlsplit(link[1]).query)["expires"][0])
    assert expires > time.time() + second.settings.link_ttl

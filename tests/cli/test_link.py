"""`python -m bot link PROJECT!IID`: signed links to the details page that the server accepts,
run in-process (the command runs its own event loop) next to the bot serving the page."""

from __future__ import annotations

import asyncio

import pytest

from bot.__main__ import main
from bot.service.app import RECORD
from tests import payloads
from tests.builders import running_pipeline, seed_mr
from tests.conftest import Bot, get
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40


async def evaluated(gitlab: FakeGitLab, bot: Bot) -> None:
    """acme/app!1 judged by the bot: the title check passes, the pipeline check fails (running),
    one foreign check."""
    checks = ("conventional-title", "pipeline-green", "someone-elses-check")
    seed_mr(gitlab, checks, sha=SHA, head_pipeline=running_pipeline(SHA))
    status, _ = await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
    assert status == 202
    await bot.settle()


async def test_link_command_mints_links_the_server_accepts(
    gitlab: FakeGitLab,
    bot: Bot,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await evaluated(gitlab, bot)
    await bot.app[RECORD].flush()
    for name in ("GITLAB_URL", "GITLAB_TOKEN", "GITLAB_TOKEN_FILE", "LINK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir))  # the server's link.key
    monkeypatch.setenv("PUBLIC_URL", bot.url)
    capsys.readouterr()

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))  # the command runs its own loop
        out, err = capsys.readouterr()
        return code, out.strip(), err

    code, by_path, _ = await run("link", "acme/app!1")
    assert code == 0 and by_path.startswith(f"{bot.url}/mr/1/1?expires=")
    status, html, _ = await get(bot, by_path)
    assert status == 200 and "pipeline-green" in html
    code, by_id, _ = await run("link", "1!1", "--ttl", "120")
    assert code == 0 and (await get(bot, by_id))[0] == 200

    code, _, err = await run("link", "acme/unknown!1")
    assert code == 1 and "numeric id" in err
    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir / "elsewhere"))
    code, _, err = await run("link", "1!1")
    assert code == 1 and "no link key" in err
    assert not (bot.settings.state_dir / "elsewhere").exists()  # no stray key was made
    monkeypatch.setenv("LINK_SECRET", "another-secret")  # not the server's key: refused there
    code, foreign, _ = await run("link", "1!1")
    assert code == 0 and (await get(bot, foreign))[0] == 403

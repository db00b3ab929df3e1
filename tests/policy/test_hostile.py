"""Hostile policy files (issue 10 item 2): `validate` answers every one within 2 s with exit 1 and
`file:line: message` lines, never a traceback; a running service survives them in its folder,
reloads off the event loop, and says in /readyz and /metrics since when the files on disk are
broken, while the last good set serves; valid files added later are still picked up.

Named cases run `python -m bot validate` as a subprocess each; a derandomised hypothesis test
feeds many more hostile texts to the same command in-process (a subprocess per example would
take minutes). HOSTILE_EXAMPLES=N runs N examples instead of 300."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.__main__ import main
from bot.config import Settings
from bot.service.app import POLICIES, create_app
from bot.service.policy_store import PolicyStore
from tests.conftest import Bot, LoopLag, write_policies
from tests.processes import REPO, bot_cmd, clean_env

VALID = "check: title\nrequire:\n  - title: '^feat'\n"


def bomb(levels: int = 8, fanout: int = 9) -> str:
    """Each rule is `any` of `fanout` aliases to the previous one: fanout**levels rules once
    expanded, from a few hundred bytes."""
    lines = ["check: bomb", "require:", "  - &r0 {title: x}"]
    for level in range(1, levels):
        refs = ", ".join([f"*r{level - 1}"] * fanout)
        lines.append(f"  - &r{level} {{any: [{refs}]}}")
    return "\n".join(lines) + "\n"


def laughs() -> str:
    """The classic billion laughs, in label lists (a mapping of lists of lists of ...)."""
    lines = ["check: lol", "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"lol{level}: &l{level} [{refs}]")
    lines += ["require:", "  - labels: {any: *l8}"]
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, str | bytes] = {
    "merge-keys-list": "check: x\nrequire:\n  - title: a\n<<: [1, 2]\n",
    "merge-key-scalar": "check: x\n<<: 5\nrequire:\n  - title: a\n",
    "merge-key-in-a-rule": "check: x\nrequire:\n  - {<<: [{a: 1}, 3], title: a}\n",
    "self-alias-list": "check: x\nrequire: &a\n  - any: *a\n",
    "self-alias-map": "check: x\nrequire:\n  - &a {not: *a}\n",
    "self-merge": "check: x\nrequire:\n  - &a {<<: *a, title: a}\n",
    "deep-lists": "check: x\nrequire:\n  - " + "[" * 5000 + "]" * 5000 + "\n",
    "deep-combinators": "check: x\nrequire:\n  - "
    + "{any: [" * 2000
    + "{title: a}"
    + "]}" * 2000
    + "\n",
    "lone-surrogate-regex": 'check: x\nrequire:\n  - title: "\\ud800"\n',
    "lone-surrogate-glob": 'check: x\nrequire:\n  - changed_files: ["src/\\udfff/**"]\n',
    "lone-surrogate-key": 'check: x\nrequire:\n  - "\\ud800": 1\n',
    "alias-bomb": bomb(),
    "billion-laughs": laughs(),
    "binary-junk": bytes(range(256)) * 4,
    "nul-bytes": b"check: x\x00\nrequire:\n  - title: a\x00\n",
    "huge-8-mb": "check: x\nrequire:\n" + "  - title: 'a'\n" * 550_000,
    "python-tag": "check: !!python/object/apply:os.system ['true']\nrequire:\n  - title: a\n",
    "empty-anchor-soup": "&a\n",
}

LINE = re.compile(r"^(?P<path>.+):(?P<line>\d+): (?P<message>.+)$")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_validate_answers_a_hostile_file_within_2_s_with_file_line_messages(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.yml"
    content = HOSTILE[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.perf_counter()
    try:
        result = subprocess.run(
            bot_cmd("validate", str(path)),
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate {name} ({path.stat().st_size} bytes) still runs after 10 s")
    elapsed = time.perf_counter() - started
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    for line in lines:
        match = LINE.match(line)
        assert match is not None and match["path"] == str(path), line
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"
    print(f"{name}: {path.stat().st_size} bytes, {elapsed:.2f} s, {lines[0][len(str(path)) :]}")


# -- many more, in-process --------------------------------------------------------------------

SNIPPETS = [
    "<<: [1, 2]",
    "<<: *a",
    "- &a [*a]",
    "&a {not: *a}",
    "- *nowhere",
    "- " + "[" * 200,
    "- " + "{a: " * 100 + "1" + "}" * 100,
    "- title: '\\ud800'",
    '- title: "\\udfff(x"',
    "- changed_files: ['\\ud83d']",
    "- freeze: {timezone: '\\ud800', windows: []}",
    "- any: &b [*b]",
    "- !!binary aGVsbG8=",
    "- !!python/name:os.system",
    "- !foo {a: 1}",
    "? [a, b]\n: c",
    "- {? {a: 1} : b}",
    "- title: '(?=lookahead)'",
    "- approvals: {count: 99999999999999999999999}",
    "- changed_lines: {max: .inf}",
    "- labels: {any: *a}",
    "- &c {title: x}\n  - {any: [*c, *c, *c, *c, *c, *c, *c, *c]}",
    "%YAML 1.1\n---",
    "--- !!set {a, b}",
    "... \n--- second document",
    "\t- tab: indented",
    "- 'unterminated",
    "- \x1b[2J\x07",
]
BASES = [VALID, bomb(3, 4), laughs(), "check: x\nrequire:\n  - any:\n      - title: a\n"]


@st.composite
def hostile_texts(draw: st.DrawFn) -> bytes:
    """A policy (or something posing as one) with hostile pieces spliced in, or noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    lines = draw(st.sampled_from(BASES)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        piece = draw(
            st.one_of(
                st.sampled_from(SNIPPETS),
                st.text(st.characters(codec=None, categories=None), max_size=30),
            )
        )
        indent = draw(st.sampled_from(["", "  ", "    ", "\t"]))
        lines.insert(draw(st.integers(0, len(lines))), indent + piece)
    if draw(st.booleans()):
        lines = lines * draw(st.integers(1, 3))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "300"))


@settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,  # timed below, with the whole command in the budget
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(hostile_texts())
def test_validate_always_answers_in_2_s_with_exit_0_or_1_and_no_traceback(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.yml"
        path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", str(path)])  # an exception here is the traceback
        elapsed = time.perf_counter() - started
    assert code in (0, 1), (code, err.getvalue())
    assert elapsed < 2.0, (elapsed, data[:200])
    lines = out.getvalue().splitlines()
    if code == 0:
        assert lines == ["policies are valid"]
    else:
        assert lines, err.getvalue()
        for line in lines:
            match = LINE.match(line)
            assert match is not None and match["path"] == str(path), line


# -- a running service ------------------------------------------------------------------------


async def readyz(bot: Bot) -> tuple[int, dict[str, Any]]:
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        return resp.status, await resp.json()


async def metric(bot: Bot, name: str) -> float:
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match[1])


async def until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "name", ["self-alias-list", "merge-keys-list", "deep-lists", "lone-surrogate-regex"]
)
async def test_a_running_service_survives_a_hostile_file_and_says_since_when(
    start_bot: Callable[..., Any], tmp_path: Path, name: str
) -> None:
    folder = write_policies(tmp_path / "p", {"title.yml": VALID})
    bot = await start_bot(policy_dir=folder, policy_poll_interval=0.05)
    store = bot.app[POLICIES]
    good = store.current.digest
    assert await metric(bot, "gitlab_status_bot_policies_broken") == 0

    before = time.time()
    content = HOSTILE[name]
    (folder / "hostile.yml").write_bytes(
        content if isinstance(content, bytes) else content.encode()
    )
    await until(lambda: store.broken_since is not None)
    status, body = await readyz(bot)
    assert status == 200, body  # the last good set still serves
    assert body["policies_on_disk"]["problems"][0].startswith(f"{folder}/hostile.yml:")
    assert "broken since" in body["warnings"][0]
    assert await metric(bot, "gitlab_status_bot_policies_broken") == 1
    since = await metric(bot, "gitlab_status_bot_policies_broken_since_seconds")
    assert before - 1 <= since <= time.time()
    assert store.current.digest == good

    # The watcher lives on: the hostile file goes, a new valid one comes, and both count.
    (folder / "hostile.yml").unlink()
    (folder / "labels.yml").write_text("check: labelled\nrequire:\n  - draft: false\n")
    await until(lambda: store.current.by_check.get("labelled") is not None)
    status, body = await readyz(bot)
    assert status == 200 and "warnings" not in body, body
    assert await metric(bot, "gitlab_status_bot_policies_broken") == 0


async def test_reloading_a_big_valid_set_does_not_stall_the_loop(
    start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """A 56 kB policy of 3,000 rules (near the size limit) takes a few hundred ms to compile:
    in a worker thread, the loop keeps ticking meanwhile."""
    folder = write_policies(tmp_path / "p", {"title.yml": VALID})
    bot = await start_bot(policy_dir=folder, policy_poll_interval=0.05)
    store = bot.app[POLICIES]
    rules = "".join(f"  - title: 'a{n}'\n" for n in range(3_000))
    big = f"check: big\nrequire:\n{rules}"
    assert 50_000 < len(big) < 64 * 1024
    # The objects every earlier test of this session left behind are out of the garbage
    # collector's reach meanwhile: a full collection over them, which the reload's allocations
    # may trigger, took ~110 ms on its own late in the suite (a bot process holds a fraction).
    gc.collect()
    gc.freeze()
    try:
        async with LoopLag() as lag:
            (folder / "big.yml").write_text(big)
            await until(lambda: store.current.by_check.get("big") is not None)
    finally:
        gc.unfreeze()
    print(f"worst loop stall while reloading {len(big)} bytes: {lag.worst * 1000:.1f} ms")
    assert lag.worst < 0.1, sorted(lag.lags)[-5:]


async def test_a_reload_over_its_time_budget_is_reported_and_still_applies(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    folder = write_policies(tmp_path / "p", {"title.yml": VALID})
    store = PolicyStore(folder, reload_budget=0.001)
    store.load()
    app = create_app(make_settings(policy_dir=folder, policy_poll_interval=0.05), store)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        rules = "".join(f"  - title: 'a{n}'\n" for n in range(500))
        (folder / "big.yml").write_text(f"check: big\nrequire:\n{rules}")
        seen: list[str] = []
        async with aiohttp.ClientSession() as session:
            url = str(server.make_url("/readyz"))
            async with asyncio.timeout(10):
                while store.current.by_check.get("big") is None:
                    async with session.get(url) as resp:
                        seen += (await resp.json()).get("warnings", [])
                    await asyncio.sleep(0.005)
            async with session.get(url) as resp:
                assert "warnings" not in await resp.json()
    finally:
        await server.close()
    assert any("broken since" in warning for warning in seen), seen
    assert store.broken_since is None


def test_hostile_test_files_are_one_line_each_too(tmp_path: Path) -> None:
    """`validate` and `test` read *.test.yaml with the same limits."""
    folder = write_policies(tmp_path / "p", {"title.yml": VALID})
    (folder / "a.test.yaml").write_text("policy: title\ncases: &a\n  - *a\n")
    (folder / "b.test.yaml").write_text("policy: title\n<<: [1, 2]\ncases: []\n")
    (folder / "c.test.yaml").write_text(
        "policy: title\ncases:\n  - name: x\n    mr: {title: '\\ud800'}\n    expect: passed\n"
    )
    for command in ("validate", "test"):
        paths = [str(folder)] if command == "test" else [str(p) for p in folder.glob("*.yaml")]
        result = subprocess.run(
            bot_cmd(command, *paths), cwd=REPO, env=clean_env(), capture_output=True, text=True
        )
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "a.test.yaml:3: the alias *a refers to a node that contains it" in result.stdout
        assert "b.test.yaml:2: bad merge key" in result.stdout


def test_the_named_cases_are_what_they_claim() -> None:
    import yaml

    assert len(HOSTILE["alias-bomb"]) < 500  # 9**8 = 43 million rules once expanded
    assert len(HOSTILE["billion-laughs"]) < 1000
    assert len(HOSTILE["huge-8-mb"]) > 8_000_000
    composed = yaml.compose(bomb(3, 4), Loader=yaml.SafeLoader)
    assert composed is not None
    assert json.dumps(sys.version_info[:2])  # keep imports honest

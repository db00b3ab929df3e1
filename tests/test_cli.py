"""The commands (README, "Commands") as users run them: `python -m bot ...` in a real
subprocess with a controlled environment, against the fake GitLab (in this process, or
standalone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import payloads
from tests.conftest import TOKEN, WEBHOOK_SECRET, write_policies
from tests.fakegitlab import FakeGitLab, diff_file, sha_for

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "policies"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def clean_env(**settings: Any) -> dict[str, str]:
    """Only what a user's shell would have plus the given settings: nothing leaks from ours."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: str(value) for key, value in settings.items()})
    return env


def bot_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot", *args]


def run_bot(*args: str, timeout: float = 30, **settings: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bot_cmd(*args),
        cwd=REPO,
        env=clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]


# --- serve: refusing to start ---------------------------------------------------------------


def test_serve_without_gitlab_url_says_so_in_one_line() -> None:
    result = run_bot("serve", GITLAB_TOKEN=TOKEN)
    assert_one_error_line(result, "GITLAB_URL is not set")
    assert result.stdout == ""


def test_serve_without_a_token_says_so_in_one_line() -> None:
    result = run_bot("serve", GITLAB_URL="http://127.0.0.1:9")
    assert_one_error_line(result, "GITLAB_TOKEN (or GITLAB_TOKEN_FILE) is not set")


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_serve_with_an_unreadable_token_file_says_so_in_one_line(tmp_path: Path, kind: str) -> None:
    token_file = tmp_path / "token"
    if kind == "folder":
        token_file.mkdir()
    result = run_bot("serve", GITLAB_URL="http://127.0.0.1:9", GITLAB_TOKEN_FILE=token_file)
    assert_one_error_line(result, f"GITLAB_TOKEN_FILE '{token_file}' cannot be read")


def test_serve_with_an_invalid_policy_names_file_and_line(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "policies",
        {"review.yml": "check: review\nrequire:\n  - lables: {any: [reviewed]}\n"},
    )
    result = run_bot(
        "serve",
        GITLAB_URL="http://127.0.0.1:9",
        GITLAB_TOKEN=TOKEN,
        POLICY_DIR=folder,
        STATE_DIR=tmp_path / "state",
    )
    assert_one_error_line(
        result,
        f"invalid policy: {folder}/review.yml:3: unknown predicate `lables`; "
        "did you mean `labels`?",
    )


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_bot(
            "serve",
            GITLAB_URL="http://127.0.0.1:9",
            GITLAB_TOKEN=TOKEN,
            POLICY_DIR=SHIPPED,
            STATE_DIR=tmp_path / "state",
            HOST="127.0.0.1",
            PORT=taken.getsockname()[1],
            LOG_LEVEL="error",
            GITLAB_TIMEOUT=0.5,
        )
    assert_one_error_line(result, "cannot listen on 127.0.0.1:")


# --- serve: a real process against a standalone fake GitLab ---------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def standalone_fake(*args: str) -> Iterator[str]:
    """`python -m tests.fakegitlab --port 0 ...`; yields its URL (its first line of output)."""
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakegitlab", "--port", "0", "--token", TOKEN, *args],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        ready, _, _ = select.select([fake.stdout], [], [], 15)
        assert ready, "the fake GitLab did not print its URL"
        url = fake.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        fake.send_signal(signal.SIGTERM)
        try:
            fake.wait(timeout=5)
        except subprocess.TimeoutExpired:
            fake.kill()
            fake.wait()


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_until(probe: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            result = probe()
            if result:
                return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_serve_runs_decides_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with standalone_fake("--seed-mrs", "1", "--checks", "conventional-title") as gitlab_url:
        serve = subprocess.Popen(
            bot_cmd("serve"),
            cwd=REPO,
            env=clean_env(
                GITLAB_URL=gitlab_url,
                GITLAB_TOKEN=TOKEN,
                WEBHOOK_SECRET=WEBHOOK_SECRET,
                POLICY_DIR=SHIPPED,
                STATE_DIR=tmp_path / "state",
                HOST="127.0.0.1",
                PORT=port,
                LOG_FORMAT="json",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            bot = f"http://127.0.0.1:{port}"
            assert wait_until(lambda: http("GET", f"{bot}/healthz")) == (200, {"status": "ok"})
            hook = payloads.merge_request_hook(project_id=1, iid=1, sha=sha_for("seed/1"))
            headers = {
                "Content-Type": "application/json",
                "X-Gitlab-Event": "Merge Request Hook",
                "X-Gitlab-Token": WEBHOOK_SECRET,
            }
            assert http("POST", f"{bot}/webhook", hook, headers)[0] == 202
            statuses = f"{gitlab_url}/_fake/statuses/1/1"
            wait_until(lambda: http("GET", statuses)[1] == {"conventional-title": "passed"})
            started = time.monotonic()
            serve.send_signal(signal.SIGTERM)
            _, stderr = serve.communicate(timeout=10)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.communicate()
    assert serve.returncode == 0, stderr
    assert time.monotonic() - started < 5
    assert "Traceback" not in stderr
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "decision" in events and events[-1] == "stopped"
    assert TOKEN not in stderr and WEBHOOK_SECRET not in stderr


# --- validate ---------------------------------------------------------------------------------


def test_validate_accepts_the_shipped_policies() -> None:
    result = run_bot("validate", str(SHIPPED))
    assert (result.returncode, result.stdout, result.stderr) == (0, "policies are valid\n", "")


def test_validate_reports_every_problem_as_file_line_message(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        {
            "a.yml": """\
                check: review
                require:
                  - lables: {any: [reviewed]}
                  - approvals:
                      form: {groups: [acme/security]}
            """,
            "b.yml": "check: review\nrequire:\n  - draft: false\n",
            "c.yml": """\
                check: freeze
                require:
                  - freeze:
                      timezone: Europe/Berln
                      windows: [{from: Fri 16:00, to: Mon 08:00}]
            """,
            "d.yml": "check: empty\nrequire: []\n",
        },
    )
    result = run_bot("validate", str(folder))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{folder}/a.yml:3: unknown predicate `lables`; did you mean `labels`?",
        f"{folder}/a.yml:5: unknown key `form` in `approvals`; did you mean `from`?",
        f"{folder}/c.yml:4: unknown timezone `Europe/Berln`; did you mean `Europe/Berlin`? "
        "(use an IANA name like Europe/Berlin)",
        f"{folder}/d.yml:2: `require` is empty: give at least one rule",
        f"{folder}/b.yml:1: duplicate check `review`: already defined in {folder}/a.yml:1",
    ]
    assert result.stderr == "5 problems found\n"


async def test_validate_warns_about_groups_and_users_gitlab_cannot_show(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """A typo in a group name would leave every rule consulting it undecided: with a token,
    `validate` names it, where, and what GitLab said (a warning: the policy itself is valid)."""
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "dba.yml").write_text(
        "check: dba-review\n"
        "require:\n"
        "  - approvals: {count: 1, from: {groups: [acme/dba, acme/security]}}\n"
        "  - author: {users: [nobody-here]}\n"
    )
    result = await asyncio.to_thread(
        run_bot, "validate", str(folder), GITLAB_URL=gitlab.url, GITLAB_TOKEN=TOKEN
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"warning: {folder}/dba.yml:3: group acme/dba: GitLab answered 404: the project, merge "
        "request or status check does not exist, or the token's user cannot see it (add it as "
        "a member of the project)",
        f"warning: {folder}/dba.yml:4: user nobody-here: GitLab has no such user",
        "policies are valid",
    ]


def test_validate_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    assert_one_error_line(run_bot("validate", str(tmp_path / "nope")), "no such file or folder")


# --- test -----------------------------------------------------------------------------------


def test_test_runs_the_shipped_cases() -> None:
    result = run_bot("test", str(SHIPPED))
    assert result.returncode == 0, result.stdout
    *cases, summary = result.stdout.splitlines()
    assert re.fullmatch(r"(\d+) passed, 0 failed", summary)
    assert int(summary.split()[0]) == len(cases) >= 40
    assert all(line.startswith("PASS ") for line in cases)
    # Every shipped policy has cases.
    tested = {line.split()[1].rstrip(":") for line in cases}
    assert tested == {path.stem for path in SHIPPED.glob("*.yml")}


def test_test_fails_on_a_failing_case(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        {
            "size.yml": "check: size\nrequire:\n  - changed_lines: {max: 10}\n",
            "size.test.yaml": """\
                policy: size
                cases:
                  - name: small
                    mr: {changed_files: [{path: a.py, additions: 3}]}
                    expect: passed
                  - name: wrongly thought small
                    mr: {changed_files: [{path: a.py, additions: 30}]}
                    expect: passed
            """,
        },
    )
    result = run_bot("test", str(folder))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "PASS size: small",
        "FAIL size: wrongly thought small: expected passed, got failed "
        f"(changed_lines: 30 > max 10) [{folder}/size.test.yaml:6]",
        "1 passed, 1 failed",
    ]


# --- explain ----------------------------------------------------------------------------------


def seed_explain(gitlab: FakeGitLab) -> None:
    """group/app!42: an auth change by alice, approved only by alice herself, 500 lines."""
    gitlab.add_group(11, "acme/security", [{"id": 1, "username": "alice"}])
    gitlab.add_project(7, "group/app")
    gitlab.add_mr(
        7,
        42,
        title="Add login",
        author={"id": 1, "username": "alice"},
        diffs=[diff_file("src/auth/login.py", additions=450, deletions=50)],
        approved_by=[{"id": 1, "username": "alice"}],
        pipeline="running",
    )
    gitlab.add_status_check(7, "security-review")
    gitlab.add_status_check(7, "conventional-title")
    gitlab.add_status_check(7, "another-service")


async def explain_process(
    gitlab: FakeGitLab, reference: str, *, tty: bool = False, **settings: Any
) -> tuple[int, str, str]:
    """Run `python -m bot explain` (stdout on a pseudo-terminal when `tty`)."""
    env = clean_env(GITLAB_URL=gitlab.url, GITLAB_TOKEN=TOKEN, POLICY_DIR=SHIPPED, **settings)
    master = slave = -1
    if tty:
        master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *bot_cmd("explain", reference),
        cwd=REPO,
        env=env,
        stdout=slave if tty else asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if tty:
        os.close(slave)
        out_bytes, err_bytes = await asyncio.gather(
            asyncio.to_thread(_read_pty, master),
            proc.stderr.read(),  # type: ignore[union-attr]
        )
        os.close(master)
        await asyncio.wait_for(proc.wait(), 30)
    else:
        out_bytes, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out_bytes.decode(), err_bytes.decode()


def _read_pty(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_explain_prints_the_tree_with_evidence_and_facts_and_writes_nothing(
    gitlab: FakeGitLab,
) -> None:
    seed_explain(gitlab)
    code, out, err = await explain_process(gitlab, "group/app!42")
    assert (code, err) == (0, "")
    assert not ANSI.search(out), "no colour when stdout is not a terminal"
    lines = out.splitlines()
    assert lines[0] == "group/app!42: Add login"
    assert any(
        line.startswith("facts fetched: MR, status checks, diffs, line counts, approvals,")
        and "members of acme/security" in line
        and "all reads" in line
        for line in lines
    )
    assert "  diffs: 1 file, +450 -50: src/auth/login.py" in lines
    assert "  approvals: alice" in lines
    assert "  members of acme/security: alice" in lines
    assert f"security-review ({SHIPPED}/security-review.yml) — GitLab shows pending" in lines
    assert (
        "  ✗ security approval — approvals: 0 of 1 from acme/security "
        "(alice approved but is the author)" in lines
    )
    assert "      fix: get 1 more approval from acme/security" in lines
    assert "      ✗ changed_lines: 500 > max 400" in lines
    assert '  ✗ conventional title — title: "Add login" does not match' in out
    assert "status checks with no policy here: another-service" in lines
    assert re.search(r"^6 policies: \d passed( \(\d not applicable\))?, \d failed \(", out, re.M)
    assert [c for c in gitlab.calls if c.method != "GET"] == []
    assert gitlab.statuses(7, 42) == {
        "security-review": "pending",
        "conventional-title": "pending",
        "another-service": "pending",
    }


async def test_explain_by_project_id(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, _ = await explain_process(gitlab, "7!42")
    assert code == 0
    assert out.startswith("group/app!42: Add login\n")


async def test_explain_a_missing_mr_is_a_clear_error(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, err = await explain_process(gitlab, "group/app!99")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: cannot read merge request group/app!99: GitLab answered 404: the project, "
        "merge request or status check does not exist, or the token's user cannot see it "
        "(add it as a member of the project)"
    ]


async def test_explain_a_malformed_reference_is_a_usage_error(gitlab: FakeGitLab) -> None:
    code, out, err = await explain_process(gitlab, "group/app#42")
    assert (code, out) == (2, "")
    assert err.startswith("error: 'group/app#42' is not PROJECT!IID")
    assert gitlab.calls == []


async def test_explain_colours_a_terminal_unless_no_color(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, _ = await explain_process(gitlab, "group/app!42", tty=True)
    assert code == 0
    assert "\x1b[31m✗\x1b[0m" in out and "\x1b[32m✓\x1b[0m" in out
    code, out, _ = await explain_process(gitlab, "group/app!42", tty=True, NO_COLOR="1")
    assert code == 0
    assert not ANSI.search(out)
    assert "✗ security approval — approvals: 0 of 1" in out


def test_help_lists_the_four_commands() -> None:
    result = run_bot("--help")
    assert result.returncode == 0
    for command in ("serve", "validate", "test", "explain"):
        assert command in result.stdout
    assert result.stderr == ""

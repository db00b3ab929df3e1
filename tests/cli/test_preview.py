"""`python -m bot preview --policies DIR`: a proposed central folder replayed read-only over the
open MRs of the served projects, as a real subprocess against the fake GitLab."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.builders import seed_mr
from tests.conftest import TOKEN, write_policies
from tests.fakegitlab import FakeGitLab
from tests.processes import REPO, bot_cmd, clean_env

CURRENT = {
    "title.yml": """
        check: conventional-title
        require:
          - title: '^(feat|fix)(\\(.+\\))?: '
    """,
}
PROPOSED = {
    "title.yml": """
        check: conventional-title
        require:
          - title: '^(feat|fix|docs)(\\(.+\\))?: '
          - labels: {any: [team]}
    """,
}


async def preview(
    gitlab: FakeGitLab, tmp_path: Path, *args: str, **env: Any
) -> tuple[int, str, str]:
    settings = clean_env(
        GITLAB_URL=gitlab.url,
        GITLAB_TOKEN=TOKEN,
        POLICY_DIR=write_policies(tmp_path / "current", CURRENT),
        SWEEP_BUDGET=1000,
        **env,
    )
    proc = await asyncio.create_subprocess_exec(
        *bot_cmd("preview", *args),
        cwd=REPO,
        env=settings,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_preview_prints_every_verdict_that_would_change_and_writes_nothing(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """!1 passes today and would fail (no `team` label); !2 fails today and would pass (docs
    is allowed, it has the label); !3 passes either way. Exit 1: something would change.
    Only GET requests."""
    seed_mr(gitlab, ["conventional-title"], labels=["backend"])
    seed_mr(gitlab, iid=2, title="docs: readme", labels=["team"], source_branch="two")
    seed_mr(gitlab, iid=3, title="fix: x", labels=["team"], source_branch="three")
    proposed = write_policies(tmp_path / "proposed", PROPOSED)
    code, out, err = await preview(
        gitlab, tmp_path, "--policies", str(proposed), "--project", "acme/app"
    )
    assert code == 1, err
    lines = out.splitlines()
    assert sorted(lines[:2]) == [
        "acme/app!1 conventional-title: passed → failed: labels: has none of team",
        "acme/app!2 conventional-title: failed → passed: no longer: "
        'title: "docs: readme" does not match `^(feat|fix)(\\(.+\\))?: `',
    ]
    assert lines[2].startswith("2 verdicts would change over 3 open MRs of 1 project (")
    assert {c.method for c in gitlab.calls} == {"GET"}


async def test_preview_exits_0_when_nothing_changes_and_2_on_an_invalid_folder(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    seed_mr(gitlab, ["conventional-title"], labels=["team"])
    same = write_policies(tmp_path / "same", CURRENT)
    code, out, err = await preview(gitlab, tmp_path, "--policies", str(same), PROJECTS="acme/app")
    assert code == 0, err
    assert out.startswith("0 verdicts would change over 1 open MRs of 1 project (")

    broken = write_policies(tmp_path / "broken", {"t.yml": "check: x\nrequire:\n  - tittle: a\n"})
    code, out, err = await preview(gitlab, tmp_path, "--policies", str(broken), PROJECTS="1")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == (
        f"error: {broken}/t.yml:3: unknown predicate `tittle`; did you mean `title`?"
    )
    code, _, err = await preview(gitlab, tmp_path, "--policies", str(same))
    assert code == 2
    assert err == "error: give --project P (repeatable) or set PROJECTS: which MRs to replay\n"


async def test_preview_that_cannot_read_repository_policies_exits_2_not_0(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """GitLab fails the target branch's read: both sides would only "wait for the repository
    policies", so no flip can show. The exit is 2 with what could not be read, never a green 0
    in the central policy repository's CI."""
    seed_mr(gitlab, ["conventional-title"], labels=["backend"])
    gitlab.fail(503, times=50, path_contains="/repository/branches/")
    proposed = write_policies(tmp_path / "proposed", PROPOSED)
    code, out, err = await preview(gitlab, tmp_path, "--policies", str(proposed), PROJECTS="1")
    assert code == 2, (out, err)
    assert err.splitlines() == [
        "error: acme/app: repository policies of reading `main`: "
        "GitLab answered 503: Service Unavailable"
    ]

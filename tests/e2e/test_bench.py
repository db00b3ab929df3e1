"""The benchmark keeps working: `python -m bench --quick` runs every scenario end to end (real
processes, real load) in seconds, and its pieces that judge figures count correctly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.harness import FakeControl, mr_calls, read_rounds
from bench.report import END, START, write_into
from tests.fakegitlab import FakeGitLab, seed

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "intake throughput",
    "intake throughput, one MR",
    "intake latency",
    "decision latency, L = 20 ms",
    "API economy",
    "coalescing",
    "bot CPU per decision",
    "memory, 500 MRs queued",
    "sweep cost",
    "evaluation CPU",
)


@pytest.mark.bench  # deselect locally with -m "not bench"; CI's default run keeps it
def test_quick_benchmark_measures_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if "|" in line}
    for figure in FIGURES:
        assert figure in rows, f"no row for {figure!r} in:\n{done.stdout}"
        assert "ERROR" not in rows[figure] and "| error |" not in rows[figure]
    # Numbers, not placeholders: the economy row counted real requests at the fake.
    assert "reads in 1 round" in rows["API economy"]
    text = output.read_text()
    assert START in text and END in text
    assert "Scaling past one machine" in text and "Machine: " in text


def test_read_rounds_counts_sequential_rounds() -> None:
    concurrent = [
        {"started": 0.00, "finished": 0.02},
        {"started": 0.001, "finished": 0.021},
        {"started": 0.002, "finished": 0.025},
    ]
    assert read_rounds(concurrent) == 1
    after = [*concurrent, {"started": 0.03, "finished": 0.05}]
    assert read_rounds(after) == 2


def test_results_block_replaced_and_prose_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Title\n\nprose before\n\n{START}\nold\n{END}\n\nprose after\n")
    write_into(path, f"{START}\nnew table\n{END}", skeleton="unused")
    text = path.read_text()
    assert "prose before" in text and "prose after" in text
    assert "new table" in text and "old" not in text


async def test_fake_control_endpoints_the_benchmark_reads(gitlab: FakeGitLab) -> None:
    """Timestamps, latency and pre-set statuses, as another process sees them."""
    seed(gitlab, 3, ["bench-review"], "http://bot/webhook", status="passed")
    assert gitlab.statuses(1, 2) == {"bench-review": "passed"}
    headers = {"PRIVATE-TOKEN": gitlab.token}
    async with aiohttp.ClientSession() as session:
        control = FakeControl(session, gitlab.url)
        await control.set_latency(0.05)
        mark = await control.mark()
        before = time.monotonic()
        async with session.get(f"{gitlab.api_url}/projects/1/merge_requests/2", headers=headers):
            pass
        calls = mr_calls(await control.calls(mark), 2)
        await control.set_latency(0.0)
    assert [(c["method"], c["path"]) for c in calls] == [
        ("GET", "/api/v4/projects/1/merge_requests/2")
    ]
    # Same clock as ours (CLOCK_MONOTONIC), and the added latency is in the answer time.
    assert before <= calls[0]["started"] < calls[0]["finished"]
    assert calls[0]["finished"] - calls[0]["started"] >= 0.05
    assert gitlab.latency == 0.0


async def test_the_repository_policy_counts_in_benchmarks_md_still_hold() -> None:
    """BENCHMARKS.md, "Repository policies (issue 13)": the counts `python -m bench.
    repository_policies` prints are the ones the table shows."""
    from bench.repository_policies import measure

    figures = await measure(open_mrs=3)
    assert figures["central only (REPOSITORY_POLICIES=off)"]["first"] == (2, 0, 2)
    assert figures["no .gitlab/status-checks/ in the project"]["first"] == (4, 2, 2)
    assert figures["2 repository policy files on main"]["first"] == (6, 4, 3)
    for case in figures.values():
        if "later" in case:
            assert case["later"] == (2, 0, 0)
    preview = figures["preview"]
    assert preview["open MRs replayed"] == 3
    assert preview["requests per open MR"] == 2.0
    assert preview["requests when the same head is judged again"] == 2

"""The table: one row per figure with its same-run baseline, ratio, spread and target, plus the
machine it ran on; printed, and written into BENCHMARKS.md between two markers so the prose
around it (method, profile findings) survives a re-run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


@dataclass
class Figure:
    """One row. `verdict` is met, MISSED, report (no target) or pending (cannot be measured yet)."""

    name: str
    measured: str
    baseline: str
    ratio: str
    spread: str
    target: str
    verdict: str
    notes: list[str] = field(default_factory=list)


def judge(ok: bool) -> str:
    return "met" if ok else "MISSED"


def spread(values: Sequence[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """`min-max (n runs)`, or `1 run` when there is nothing to compare."""
    if not values:
        return "—"
    if len(values) == 1:
        return "1 run"
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}{unit} over {len(values)} runs"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, Python, OS, load and date: what the numbers depend on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(x.split()[1])
            for x in _read("/proc/meminfo").splitlines()
            if x.startswith("MemTotal")
        ),
        0,
    )
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (done.stdout or done.stderr).split(" [")[0].strip()
    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadgen": wrk_version or "aiohttp client (wrk not installed)",
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(figures: Sequence[Figure]) -> str:
    head = "| figure | measured | baseline (same run) | ratio | spread | target | verdict |"
    rule = "| --- | --- | --- | --- | --- | --- | --- |"
    rows = [
        "| "
        + " | ".join(
            _cell(x)
            for x in (f.name, f.measured, f.baseline, f.ratio, f.spread, f.target, f.verdict)
        )
        + " |"
        for f in figures
    ]
    return "\n".join([head, rule, *rows])


def notes(figures: Sequence[Figure]) -> str:
    lines = []
    for figure in figures:
        for note in figure.notes:
            lines.append(f"- **{figure.name}**: {note}")
    return "\n".join(lines)


def results_block(
    figures: Sequence[Figure],
    host: dict[str, str],
    command: str,
    elapsed: float,
    scaling: str,
) -> str:
    machine_line = (
        f"{host['cpu']}, {host['cores']} cores, {host['ram']} RAM, Python {host['python']}, "
        f"{host['os']}; load average at start {host['load']}; load generator {host['loadgen']}"
    )
    parts = [
        START,
        f"Run on {host['date']} with `{command}` ({elapsed:.0f} s).",
        "",
        f"Machine: {machine_line}.",
        "",
        table(figures),
        "",
        "What each row measured:",
        "",
        notes(figures),
        "",
        scaling,
        END,
    ]
    return "\n".join(parts)


def write_into(path: Path, block: str, skeleton: str) -> None:
    """Replace the results block of `path` (created from `skeleton` when missing)."""
    text = path.read_text() if path.exists() else skeleton
    if START in text and END in text:
        before = text.split(START, 1)[0]
        after = text.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)

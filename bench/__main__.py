"""`python -m bench [--quick] [--only intake,decision,...] [--repeats N] [--output FILE]`.

The full run writes its table into BENCHMARKS.md; `--quick` (the smoke test's mode, ~15 s) and
`--only` print it and write nothing unless `--output` says where.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.harness import Harness, Options
from bench.procs import ROOT
from bench.report import Figure, machine, results_block, table, write_into
from bench.scaling import section
from bench.scenarios import SCENARIOS

SKELETON = """# Benchmarks

Run with `python -m bench` (see README). The block below is rewritten by each full run.
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the bot against the fake GitLab, each figure beside a baseline.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (~15 s)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measured figure")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load run")
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="load generator for intake (auto: wrk when installed)",
    )
    parser.add_argument(
        "--sweep-sizes", default="100,1000,10000", help="open MRs per sweep run, comma-separated"
    )
    parser.add_argument("--memory-mrs", type=int, default=10000, help="MRs queued for memory")
    parser.add_argument("--output", type=Path, help="write the results block into this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record a py-spy profile (speedscope JSON) of every bot process into this folder",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.only.split(",") if s and s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Figure], dict, bool]:
    options = Options(
        quick=args.quick,
        repeats=max(1, args.repeats),
        duration=args.duration,
        loadgen=args.loadgen,
        sweep_sizes=tuple(int(x) for x in args.sweep_sizes.split(",") if x),
        memory_mrs=args.memory_mrs,
        profile=args.profile.resolve() if args.profile else None,
    )
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    failed = False
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        harness = Harness(options, workdir, session)
        try:
            for name in chosen:
                started = time.monotonic()
                print(f"bench: {name}...", file=sys.stderr, flush=True)
                try:
                    await SCENARIOS[name](harness)
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    harness.figures.append(
                        Figure(name, "error", "—", "—", "—", "—", "ERROR", [f"{exc!r}"])
                    )
                print(
                    f"bench: {name} took {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            harness.stop_all()
    return harness.figures, harness.facts, failed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = "python -m bench" + (" " + shlex.join(argv) if argv else "")
    if argv is None:
        command = "python -m bench" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    host = machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        figures, facts, failed = asyncio.run(run(args, Path(tmp)))
    elapsed = time.monotonic() - started
    print(table(figures))
    print(f"\n{elapsed:.0f} s on {host['cpu']}, {host['cores']} cores, Python {host['python']}")
    output = args.output
    if output is None and not args.quick and not args.only:
        output = ROOT / "BENCHMARKS.md"
    if output is not None:
        write_into(output, results_block(figures, host, command, elapsed, section(facts)), SKELETON)
        print(f"written to {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

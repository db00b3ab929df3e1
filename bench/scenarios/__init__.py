"""One module per figure group; each exposes `async def run(harness) -> None` that appends
its figures to `harness.figures`."""

from __future__ import annotations

from bench.scenarios import coalescing, cpu, decision, intake, memory, sweep

SCENARIOS = {
    "intake": intake.run,
    "decision": decision.run,
    "coalescing": coalescing.run,
    "memory": memory.run,
    "sweep": sweep.run,
    "cpu": cpu.run,
}

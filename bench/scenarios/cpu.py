"""Evaluation CPU: µs per evaluation of each shipped policy (policies/) on a typical MR whose facts
are already in memory, beside a trivial title-only policy timed the same way in this process."""

from __future__ import annotations

import datetime as dt
import statistics
import timeit
from pathlib import Path

from bench.harness import Harness
from bench.procs import ROOT
from bench.report import Figure
from bot.policy import evaluate, load_policy_dir, load_policy_text
from bot.policy.facts import ChangedFile, Commit, GroupMembers, MergeRequestFacts, User
from bot.policy.model import Policy

BASELINE_POLICY = """\
check: baseline
require:
  - title: '^feat'
"""


def typical_mr() -> MergeRequestFacts:
    """A mid-sized feature MR: 12 files (one under auth/), 3 commits, 2 approvals, green CI."""
    files = [
        ChangedFile("src/auth/session.py", "src/auth/session.py", additions=40, deletions=12),
        ChangedFile("src/api/routes.py", "src/api/routes.py", additions=25, deletions=5),
        ChangedFile("src/api/old_views.py", "src/api/views.py", renamed_file=True, additions=8),
        ChangedFile("src/models/user.py", "src/models/user.py", additions=12, deletions=3),
        ChangedFile("src/legacy/util.py", "src/legacy/util.py", deleted_file=True, deletions=30),
        *(
            ChangedFile(f"tests/test_part_{n}.py", f"tests/test_part_{n}.py", additions=10)
            for n in range(5)
        ),
        ChangedFile("docs/auth.md", "docs/auth.md", additions=20, deletions=2),
        ChangedFile("CHANGELOG.md", "CHANGELOG.md", additions=2),
    ]
    return MergeRequestFacts(
        project_id=1,
        project_path="acme/app",
        iid=42,
        sha="c" * 40,
        title="feat(auth): rotate session keys every 24 hours",
        description="Rotates the session signing keys.\n\nCloses #12.",
        labels=("backend", "security"),
        source_branch="feature/rotate-keys",
        target_branch="main",
        author=User(1, "alice"),
        pipeline_status="success",
        web_url="http://gitlab.example.com/acme/app/-/merge_requests/42",
        changed_files=tuple(files),
        approved_by=(User(3, "carol"), User(2, "bob")),
        commits=tuple(
            Commit(f"{n:040x}", f"feat(auth): step {n}\n\nSigned-off-by: Alice <a@example.com>")
            for n in range(3)
        ),
        unresolved_threads=0,
        group_members={
            "acme/security": GroupMembers(frozenset({"carol"})),
            "acme": GroupMembers(frozenset({"alice"})),
        },
        now=dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC),  # a Tuesday, outside any freeze
    )


def time_policy(policy: Policy, facts: MergeRequestFacts, budget: float) -> list[float]:
    """Seconds per evaluation, five measurements of about `budget`/5 seconds each."""
    timer = timeit.Timer(lambda: evaluate(policy, facts))
    probe = 20
    elapsed = timer.timeit(probe)
    number = max(1, int(probe * (budget / 5) / max(elapsed, 1e-9)))
    return [t / number for t in timer.repeat(repeat=5, number=number)]


async def run(h: Harness) -> None:
    facts = typical_mr()
    budget = 0.1 if h.options.quick else 0.5
    policies = load_policy_dir(ROOT / "policies").policies
    baseline_times = time_policy(load_policy_text(BASELINE_POLICY), facts, budget)
    baseline = statistics.median(baseline_times)
    per_policy: dict[str, float] = {}
    verdicts: dict[str, str] = {}
    for policy in policies:
        per_policy[policy.check] = statistics.median(time_policy(policy, facts, budget))
        verdicts[policy.check] = evaluate(policy, facts).status
    total = sum(per_policy.values())
    slowest = max(per_policy, key=per_policy.__getitem__)
    h.facts["evaluation_cpu_all_policies"] = total
    detail = ", ".join(
        f"{name} {seconds * 1e6:.0f} ({verdicts[name]})"
        for name, seconds in sorted(per_policy.items(), key=lambda kv: -kv[1])
    )
    h.figures.append(
        Figure(
            name="evaluation CPU",
            measured=f"{total * 1e6:.0f} µs for all {len(policies)} shipped policies",
            baseline=f"title-only policy {baseline * 1e6:.1f} µs",
            ratio=f"{total / len(policies) / baseline:.1f}x baseline per policy",
            spread=(
                f"baseline {min(baseline_times) * 1e6:.1f}-{max(baseline_times) * 1e6:.1f} µs "
                "over 5 runs"
            ),
            target="report",
            verdict="report",
            notes=[
                f"In-process (bot.policy.evaluate on bot.policy.facts.MergeRequestFacts already in "
                f"memory), a 12-file, 3-commit, 2-approval feature MR; µs per policy: {detail}. "
                f"Slowest: {slowest}. Policies from {Path('policies')}/."
            ],
        )
    )

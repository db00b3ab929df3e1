"""`python -m tests.fakegitlab`: the fake GitLab in its own process, seeded for a benchmark
(`seed`) or for the README's "Try it in a minute" (`seed_demo`). The first line it prints is its
URL; it runs until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

from tests.fakegitlab.diffs import diff_file
from tests.fakegitlab.fake import FakeGitLab
from tests.fakegitlab.server import sha_for

DEMO_PORT = 8929
# The shipped policies (policies/*.yml) the demo registers a status check for, in this order.
DEMO_CHECKS = (
    "conventional-title",
    "security-review",
    "size-limit",
    "pipeline-green",
    "docs-or-approval",
)
ALICE = {"id": 1, "username": "alice", "name": "Alice Example"}
BOB = {"id": 2, "username": "bob", "name": "Bob Example"}
CAROL = {"id": 3, "username": "carol", "name": "Carol Example", "access_level": 30}


def _check_url(bot_url: str, name: str) -> str:
    separator = "&" if "?" in bot_url else "?"
    return f"{bot_url}{separator}check={name}"


def seed(
    fake: FakeGitLab, mrs: int, checks: Sequence[str], bot_url: str, status: str | None = None
) -> None:
    """Project 1 "acme/app" with `mrs` open MRs (iids 1..N: a few files changed, a passing
    pipeline, one approval, two commits) and one status check per name; groups "acme" and
    "acme/security" with members. With `status`, every check of every MR already shows it for
    the MR's head (e.g. "passed", so a sweep finds nothing to repair)."""
    fake.add_group(10, "acme", [{"id": 1, "username": "alice"}, {"id": 2, "username": "bob"}])
    fake.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    fake.add_project(1, "acme/app", only_allow_merge_if_all_status_checks_passed=True)
    check_ids = []
    for name in checks:
        check = fake.add_status_check(1, name, external_url=_check_url(bot_url, name))
        check_ids.append(int(check["id"]))
    for iid in range(1, mrs + 1):
        sha = sha_for(f"seed/{iid}")
        fake.add_mr(
            1,
            iid,
            sha=sha,
            title=f"feat: change number {iid}",
            description=f"Implements change {iid}.",
            labels=["backend"] if iid % 2 else ["frontend", "hotfix"],
            author={"id": 1 + iid % 2, "username": "alice" if iid % 2 else "bob"},
            diffs=[
                diff_file(f"src/module_{iid % 7}/file_{n}.py", additions=5 * n, deletions=n)
                for n in range(1, 4)
            ],
            commits=[
                {"id": sha, "message": f"feat: change {iid}\n\nSigned-off-by: Alice <a@x>"},
                {"id": sha_for(f"seed/{iid}/parent"), "message": "chore: prepare"},
            ],
            approved_by=[{"id": 3, "username": "carol"}],
            pipeline="success",
        )
        if status is not None:
            for check_id in check_ids:
                fake.set_status(1, iid, check_id, sha, status)


def seed_demo(fake: FakeGitLab, bot_url: str) -> dict[int, str]:
    """The demo of the README's "Try it in a minute", for the shipped policies (policies/):
    project 1 "acme/app" with a status check per DEMO_CHECKS name at `<bot_url>?check=<name>`,
    groups "acme" (alice, bob) and "acme/security" (carol, Developer), and three open MRs:

    - !1 passes every check: a conventional title, 42 lines under src/api/, approved by carol,
      a green pipeline for its head;
    - !2 fails every check, each with a clear fix: the title "Update stuff", 900 changed lines
      in src/auth/login.py (so security-review applies and wants acme/security's approval),
      approved by nobody, a failed pipeline for its head;
    - !3 changes only docs: every check passes but pipeline-green, which waits for its running
      pipeline.

    Returns {iid: one line saying what the MR shows}, which `--demo` prints."""
    fake.add_group(10, "acme", [ALICE, BOB])
    fake.add_group(11, "acme/security", [CAROL])
    fake.add_project(1, "acme/app", only_allow_merge_if_all_status_checks_passed=True)
    for name in DEMO_CHECKS:
        fake.add_status_check(1, name, external_url=_check_url(bot_url, name))
    fake.add_mr(
        1,
        1,
        sha=sha_for("demo/1"),
        title="feat(api): add a health endpoint",
        description="Adds GET /health for the load balancer.",
        author=ALICE,
        source_branch="feature/health-endpoint",
        diffs=[diff_file("src/api/health.py", additions=40, deletions=2)],
        commits=[{"id": sha_for("demo/1"), "message": "feat(api): add a health endpoint"}],
        approved_by=[CAROL],
        pipeline="success",
    )
    fake.add_mr(
        1,
        2,
        sha=sha_for("demo/2"),
        title="Update stuff",
        description="",
        author=ALICE,
        source_branch="alice-wip",
        diffs=[diff_file("src/auth/login.py", additions=700, deletions=200)],
        commits=[{"id": sha_for("demo/2"), "message": "Update stuff"}],
        pipeline="failed",
    )
    fake.add_mr(
        1,
        3,
        sha=sha_for("demo/3"),
        title="docs: describe the policy language",
        description="Documentation only.",
        author=BOB,
        source_branch="docs/policy-language",
        diffs=[
            diff_file("docs/policies.md", additions=60, new_file=True),
            diff_file("README.md", additions=5, deletions=1),
        ],
        commits=[{"id": sha_for("demo/3"), "message": "docs: describe the policy language"}],
        pipeline="running",
    )
    return {
        1: "!1 feat(api): add a health endpoint: passes every check",
        2: "!2 Update stuff: fails every check (title, security review, size, pipeline, approval)",
        3: "!3 docs: describe the policy language: pipeline-green waits for its running pipeline",
    }


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeGitLab(version=args.version, token=args.token)
    fake.latency = args.latency
    if args.fail_rate:
        fake.fail_randomly(args.fail_rate, seed=args.seed)
    url = await fake.start(args.host, args.port)
    if args.demo:
        shown = seed_demo(fake, args.bot_url)
        print(url, flush=True)
        print(f"demo: project 1 acme/app, token {args.token!r}, status checks call {args.bot_url}")
        for line in shown.values():
            print(f"  {line}")
        print("stop it with Ctrl-C", flush=True)
    else:
        checks = [c for c in args.checks.split(",") if c]
        seed(fake, args.seed_mrs, checks, args.bot_url, status=args.seed_status)
        print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakegitlab", description="Run the fake GitLab standalone."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"0: any free port (the default; {DEMO_PORT} with --demo)",
    )
    parser.add_argument("--version", default="18.9.0")
    parser.add_argument("--token", default="test-token")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--seed-mrs", type=int, default=0, help="open MRs in project 1 acme/app")
    parser.add_argument("--checks", default="", help="comma-separated status check names")
    parser.add_argument("--bot-url", default="http://127.0.0.1:8080/webhook")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="random 500/502/resets")
    parser.add_argument("--seed", type=int, default=0, help="seed for --fail-rate")
    parser.add_argument(
        "--seed-status", default=None, help="status every seeded MR's checks already show"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="seed the README's demo (acme/app, three MRs for the shipped policies)",
    )
    args = parser.parse_args(argv)
    if args.demo and (args.seed_mrs or args.checks or args.seed_status):
        parser.error("--demo seeds its own project: leave out --seed-mrs, --checks, --seed-status")
    if args.port is None:
        args.port = DEMO_PORT if args.demo else 0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))

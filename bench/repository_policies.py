"""`python -m bench.repository_policies`: what repository policies and their preview cost in
GitLab requests (docs/architecture.md#repository-policies; the rows of BENCHMARKS.md,
"Repository policies").

In one process: the fake GitLab and the bot (create_app, as `serve` builds it) on 127.0.0.1; MR
hooks delivered as GitLab sends them; every request the fake received counted by route. Counts
are exact, not timed, so one run is the figure.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import textwrap
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.logs import configure_logging
from bot.service.app import QUEUE, create_app
from bot.service.policy_store import PolicyStore
from tests.fakegitlab import FakeGitLab
from tests.payloads import merge_request_hook

FOLDER = ".gitlab/status-checks"
CENTRAL = {
    "title.yml": "check: conventional-title\nrequire:\n  - title: '^(feat|fix): '\n",
    "labels.yml": "check: labelled\nrequire:\n  - labels: {any: [team]}\n",
}
REPOSITORY = {
    f"{FOLDER}/title.yml": "check: conventional-title\nrequire:\n  - title: 'ACME-[0-9]+'\n",
    f"{FOLDER}/reviewed.yml": "check: reviewed\nrequire:\n  - labels: {any: [reviewed]}\n",
}
PROPOSED = {f"{FOLDER}/reviewed.yml": "check: reviewed\nrequire:\n  - labels: {any: [team]}\n"}
CHECKS = ("conventional-title", "labelled", "reviewed")
TOKEN = "bench-token"


async def _settle(app: Any) -> None:
    queue = app[QUEUE]
    while True:
        await queue.join()
        await asyncio.sleep(0.02)
        if queue.depth == 0 and queue.running == 0:
            return


class Run:
    """The fake and the bot, and the MR deliveries."""

    def __init__(self, gitlab: FakeGitLab, server: TestServer, session: aiohttp.ClientSession):
        self.gitlab, self.server, self.session = gitlab, server, session

    async def deliver(self, iid: int) -> None:
        sha = self.gitlab.mr(1, iid)["sha"]
        body = json.dumps(merge_request_hook(iid=iid, sha=sha))
        headers = {"X-Gitlab-Event": "Merge Request Hook", "Content-Type": "application/json"}
        async with self.session.post(
            str(self.server.make_url("/webhook")), data=body, headers=headers
        ) as answer:
            assert answer.status == 202, await answer.text()
        await _settle(self.server.app)

    def counted(self) -> Counter[str]:
        return Counter(c.route or f"{c.method} {c.path}" for c in self.gitlab.calls)


async def _run(
    folder: Path,
    *,
    repository: bool,
    files: dict[str, str],
    open_mrs: int,
    policy_check: bool = True,
) -> tuple[Run, Any]:
    gitlab = FakeGitLab(token=TOKEN)
    await gitlab.start()
    gitlab.add_project(1, "acme/app")
    for iid in range(1, open_mrs + 1):
        gitlab.add_mr(1, iid, title="feat: x", labels=["team"], source_branch=f"b{iid}")
    for check in (*CHECKS, "status-check-policies") if policy_check else CHECKS:
        gitlab.add_status_check(1, check)
    if files:
        gitlab.commit_files(1, "main", files)
    policies = folder / "central"
    policies.mkdir(exist_ok=True)
    for name, text in CENTRAL.items():
        (policies / name).write_text(textwrap.dedent(text))
    settings = Settings(
        gitlab_url=gitlab.url,
        gitlab_token=TOKEN,
        policy_dir=policies,
        state_dir=folder / f"state-{repository}-{len(files)}-{open_mrs}-{policy_check}",
        handle_signals=False,
        evaluation_spacing=0.0,
        sweep_budget=1000.0,
        reconcile_interval=3600.0,
    )
    settings = replace(settings, repository_policies=repository)
    store = PolicyStore(settings.policy_dir)
    store.load()
    server = TestServer(create_app(settings, store), host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    await asyncio.sleep(0.1)  # the start-up sweep (no known project yet)
    await _settle(server.app)
    return Run(gitlab, server, session), (gitlab, server, session)


async def _close(parts: Any) -> None:
    gitlab, server, session = parts
    await session.close()
    await server.close()
    await gitlab.close()


def _repository_reads(counts: Counter[str]) -> int:
    parts = ("/repository/branches/", "/repository/tree", "/repository/files/")
    return sum(n for route, n in counts.items() if any(p in route for p in parts))


async def measure(open_mrs: int = 10) -> dict[str, Any]:
    """Requests per decision (the first look at a target head, then later decisions of heads
    already seen) with and without repository policies, and the preview's requests."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, repository, files, check in CASES:
            run, parts = await _run(
                folder, repository=repository, files=files, open_mrs=2, policy_check=check
            )
            try:
                run.gitlab.reset_calls()
                await run.deliver(1)
                first = run.counted()
                await run.deliver(2)  # a second MR's head: seen once
                run.gitlab.reset_calls()
                for _ in range(5):
                    await run.deliver(1)
                    await run.deliver(2)
                later = run.counted()
            finally:
                await _close(parts)
            figures[name] = {
                "first": (_reads(first), _repository_reads(first), _writes(first)),
                "later": (_reads(later) / 10, _repository_reads(later) / 10, _writes(later) / 10),
            }

        run, parts = await _run(folder, repository=True, files=REPOSITORY, open_mrs=open_mrs + 1)
        try:
            for iid in range(1, open_mrs + 2):
                await run.deliver(iid)  # main's policies read; every head seen
            run.gitlab.propose_files(1, 1, PROPOSED)
            run.gitlab.reset_calls()
            await run.deliver(1)
            with_preview = run.counted()
            run.gitlab.reset_calls()
            await run.deliver(1)
            again = run.counted()
        finally:
            await _close(parts)
        mr_route = "GET /projects/:id/merge_requests/:merge_request_iid"
        replayed = with_preview[mr_route] - 1  # the policy MR's own read is its evaluation
        per_mr = with_preview[mr_route] + with_preview[f"{mr_route}/status_checks"] - 2
        fixed = with_preview["GET /projects/:id/merge_requests"] + _repository_reads(with_preview)
        figures["preview"] = {
            "open MRs replayed": replayed,
            "requests per open MR": per_mr / max(1, replayed),
            "requests once per preview (MR list, proposed folder and changed files)": fixed,
            "requests when the same head is judged again": _reads(again) + _writes(again),
            "counts": dict(with_preview),
        }
    return figures


CASES = (
    ("central only (REPOSITORY_POLICIES=off)", False, {}, False),
    ("no .gitlab/status-checks/ in the project", True, {}, False),
    ("2 repository policy files on main", True, REPOSITORY, False),
    (
        "2 repository policy files on main, `status-check-policies` registered",
        True,
        REPOSITORY,
        True,
    ),
)


def _reads(counts: Counter[str]) -> int:
    return sum(n for route, n in counts.items() if route.startswith("GET "))


def _writes(counts: Counter[str]) -> int:
    return sum(n for route, n in counts.items() if not route.startswith("GET "))


def main() -> None:
    configure_logging(fmt="json", level="error", secrets=[TOKEN])
    figures = asyncio.run(measure())
    print(
        "| project | first decision of an MR head: GET (of them repository) + writes "
        "| later decisions of that head: GET (repository) + writes |"
    )
    print("| --- | --- | --- |")
    for name, *_ in CASES:
        first, later = figures[name]["first"], figures[name]["later"]
        print(
            f"| {name} | {first[0]} ({first[1]}) + {first[2]} | "
            f"{later[0]:g} ({later[1]:g}) + {later[2]:g} |"
        )
    print(json.dumps(figures["preview"], indent=1))


if __name__ == "__main__":
    main()

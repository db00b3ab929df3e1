"""`python -m bot preview --policies DIR [--project P ...]`: what a proposed central folder would
change, before it is deployed.

Every open MR of the served projects (PROJECTS, or `--project`) is read once, read-only (GET
requests only), and judged under the current POLICY_DIR and under DIR, each over the MR's target
branch's repository policies as the service would; every verdict that would change is printed
with why. Exit status, for the central policy repository's CI: 0 nothing would change, 1 some
verdict would change, 2 the preview could not be made (DIR or POLICY_DIR invalid, GitLab refused).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bot.cli.base import fail, settings_from_env
from bot.config import Settings
from bot.policy.loader import load_policy_dir
from bot.policy.model import PolicyLoadError, PolicySet
from bot.service.policy_store import PolicyStore
from bot.terminal import TerminalStream, printable

if TYPE_CHECKING:
    from bot.policy.facts import MergeRequestFacts

# The GitLab client (aiohttp, gidgetlab) is imported where it is used: `python -m bot` builds
# every command's parser, and `validate` or `test` should not pay for loading it.

UNLIMITED = 10_000


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="replay a proposed policy folder over open MRs, read-only: what would change",
    )
    parser.add_argument("--policies", required=True, metavar="DIR", help="the proposed folder")
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="P",
        help="a project path or id (repeatable; default: PROJECTS)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=UNLIMITED,
        metavar="N",
        help="open MRs per project, at most (default: all)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_env(quiet=True)
    out = TerminalStream(sys.stdout)
    return preview(
        settings,
        Path(args.policies),
        args.project or list(settings.projects),
        limit=max(1, args.limit),
        out=out,  # type: ignore[arg-type]
    )


def _load(folder: Path, what: str) -> PolicySet | int:
    if not folder.is_dir():
        return fail(f"{what} {str(folder)!r} is not a folder")
    try:
        return load_policy_dir(folder) if what == "--policies" else PolicyStore(folder).load()
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: {printable(str(problem))}", file=sys.stderr)
        return fail(f"{what} {str(folder)!r} does not load ({len(exc.problems)} problems)")


def preview(
    settings: Settings,
    proposed_dir: Path,
    projects: list[str],
    *,
    limit: int = UNLIMITED,
    out: TextIO = sys.stdout,
) -> int:
    """The command; see the module docstring for the exit status."""
    if not projects:
        return fail("give --project P (repeatable) or set PROJECTS: which MRs to replay")
    proposed = _load(proposed_dir, "--policies")
    if isinstance(proposed, int):
        return proposed
    current = _load(settings.policy_dir, "POLICY_DIR")
    if isinstance(current, int):
        return current
    return asyncio.run(_preview(settings, current, proposed, projects, limit, out))


async def _preview(
    settings: Settings,
    current: PolicySet,
    proposed: PolicySet,
    projects: list[str],
    limit: int,
    out: TextIO,
) -> int:
    import aiohttp

    from bot.gitlab.client import GitLab, GitLabError, RequestBudget
    from bot.gitlab.snapshot import SnapshotReader
    from bot.service.preview import replay
    from bot.service.repository import RepositoryPolicies

    requests: list[str] = []

    def count(method: str, url: str, status: int | None, headers: Mapping[str, str]) -> None:
        requests.append(method)

    changed = examined = 0
    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        gitlab = GitLab.from_settings(session, settings, on_response=count)
        await gitlab.detect_version()
        repository = RepositoryPolicies(gitlab) if settings.repository_policies else None
        reader = SnapshotReader(gitlab)
        budget = RequestBudget(settings.sweep_budget)

        async def sets_for(facts: MergeRequestFacts) -> tuple[PolicySet, PolicySet]:
            if repository is None:
                return current, proposed
            target = await repository.for_target(facts.project_id, facts.target_branch)
            if target.problem is not None:
                # Both sides would "wait for the repository policies" and no flip would show:
                # a preview that could not look must not read as "nothing changes".
                unread = f"{facts.project_path}: repository policies of {target.problem}"
                if unread not in problems:
                    problems.append(unread)
            checks = [*current.by_check, *proposed.by_check]
            return (
                target.apply(current, checks, facts.now),
                target.apply(proposed, checks, facts.now),
            )

        for project in projects:
            ident: int | str = int(project) if project.isdigit() else project
            try:
                merge_requests = await gitlab.open_merge_requests(ident)
            except GitLabError as exc:
                problems.append(f"{project}: {exc.advice()}")
                continue
            found = await replay(
                reader,
                merge_requests,
                sets_for,
                budget=budget,
                reference=functools.partial(_reference, project=project),
                limit=limit,
            )
            examined += found.examined
            problems += found.unreadable
            for flip in found.flips:
                print(printable(flip.line), file=out)
                changed += 1
            if found.left_out:
                print(f"{project}: {found.left_out} open MRs past --limit not replayed", file=out)
    verdicts = f"{changed} verdict{'s' if changed != 1 else ''}"
    where = f"{len(projects)} project{'s' if len(projects) != 1 else ''}"
    print(
        f"{verdicts} would change over {examined} open MRs of {where} "
        f"({len(requests)} GitLab requests, read-only)",
        file=out,
    )
    for problem in problems:
        print(f"error: {printable(problem)}", file=sys.stderr)
    if problems:
        return 2
    return 1 if changed else 0


def _reference(mr: dict[str, Any], project: str) -> str:
    references = mr.get("references")
    if isinstance(references, Mapping) and isinstance(references.get("full"), str):
        return str(references["full"])
    return f"{project}!{mr.get('iid')}"

"""`python -m bot explain group/app!42`: judge a live MR with every policy, read-only.

It reads what the service would read (the MR, its status checks and exactly the optional facts the
applicable policies need), prints those facts, then each policy's rule tree with its evidence, so
a policy author can see why a check is red without touching GitLab's state: only GET requests.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from bot.cli.base import settings_from_env
from bot.config import Settings
from bot.keys import parse_reference
from bot.policy import render_verdict
from bot.policy.evaluate import applies, judge, needs_of
from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import PolicyLoadError, PolicySet, Verdict
from bot.policy.predicates.base import listing, plural
from bot.service.policy_store import PolicyStore
from bot.terminal import TerminalStream, printable

if TYPE_CHECKING:
    from bot.gitlab.snapshot import StatusCheck

# The GitLab client (aiohttp, gidgetlab) is imported where it is used: `python -m bot` builds
# every command's parser, and `validate` or `test` should not pay for loading it.

_BOLD, _DIM, _RESET = "\033[1m", "\033[2m", "\033[0m"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain", help="evaluate a live MR read-only, e.g. group/app!42"
    )
    parser.add_argument("merge_request", metavar="PROJECT!IID")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_env(quiet=True)
    color = use_color(sys.stdout)
    out = TerminalStream(sys.stdout, colour=color)
    return explain(settings, args.merge_request, color=color, out=out)  # type: ignore[arg-type]


class ExplainError(Exception):
    """Explaining failed for a reason the user can fix; the message is the one line shown."""


def use_color(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclasses.dataclass
class Reading:
    """What explain read from GitLab."""

    facts: MergeRequestFacts
    fetched: list[str]
    listed: list[StatusCheck] | None
    listed_problem: str | None
    version: str
    requests: list[tuple[str, str]]
    # The policies deciding each check: the central ones, under the target branch's repository
    # policies (docs/architecture.md#repository-policies).
    policies: PolicySet = dataclasses.field(default_factory=PolicySet)
    # What was read of the target branch's repository policies, as `facts fetched` says it.
    repository: str | None = None


async def read_mr(settings: Settings, project: int | str, iid: int, central: PolicySet) -> Reading:
    """The MR and the facts its applicable policies need, through GET requests only."""
    import aiohttp

    from bot.gitlab.client import GitLab, GitLabError
    from bot.gitlab.snapshot import HeadMoved, SnapshotReader

    requests: list[tuple[str, str]] = []

    def record(method: str, url: str, status: int | None, headers: Mapping[str, str]) -> None:
        requests.append((method, url))

    async with aiohttp.ClientSession() as session:
        gitlab = GitLab.from_settings(session, settings, max_attempts=2, on_response=record)
        await gitlab.detect_version()
        reference = f"{project}!{iid}"
        fetched: list[FactNeeds] = []
        effective = [central]
        repository: list[str] = []

        async def needs_for(facts: MergeRequestFacts, checks: Sequence[StatusCheck]) -> FactNeeds:
            if settings.repository_policies and facts.target_branch:
                from bot.service.repository import RepositoryPolicies

                target = await RepositoryPolicies(gitlab).for_target(
                    facts.project_id, facts.target_branch
                )
                names = [*central.by_check, *(c.name for c in checks)]
                effective[0] = target.apply(central, names, facts.now)
                files = len(target.layer.files) if target.layer is not None else 0
                found = (
                    "unreadable"
                    if target.problem
                    else "too many files"
                    if target.crowded
                    else plural(files, "file")
                    if files
                    else "none"
                )
                repository.append(f"repository policies of {facts.target_branch} ({found})")
            # Every policy, listed as a check or not: explain shows what each would say.
            policies = effective[0].policies
            fetched.append(needs_of([p for p in policies if applies(p, facts)]))
            return fetched[-1]

        try:
            snapshot = await SnapshotReader(gitlab).read(
                project,
                iid,
                needs_for,
                project_path=project if isinstance(project, str) else None,
                now=dt.datetime.now(dt.UTC),
                checks_optional=True,
            )
        except HeadMoved as moved:
            raise ExplainError(
                f"{reference} changed while it was read ({moved}): run explain again"
            ) from None
        except GitLabError as exc:
            what = (
                "merge request" if exc.path.endswith(f"/merge_requests/{iid}") else "the facts of"
            )
            raise ExplainError(f"cannot read {what} {reference}: {exc.advice()}") from None
        return Reading(
            facts=snapshot.facts,
            fetched=fetched[-1].describe() if fetched else [],
            listed=None if snapshot.checks_problem else list(snapshot.checks),
            listed_problem=snapshot.checks_problem,
            version=str(gitlab.version),
            requests=requests,
            policies=effective[0],
            repository=repository[-1] if repository else None,
        )


def _pipeline(facts: MergeRequestFacts) -> str:
    if facts.pipeline_status:
        return facts.pipeline_status
    if facts.stale_pipeline_sha:
        return f"none for {facts.sha[:8]} (GitLab still shows {facts.stale_pipeline_sha[:8]}'s)"
    return "none"


def _yes_no(value: bool, yes: str, no: str) -> str:
    return yes if value else no


# The optional facts describe_facts words itself (the others are shown as they are).
_SHOWN = frozenset(
    {
        "pipeline_status",
        "stale_pipeline_sha",
        "changed_files",
        "approved_by",
        "approvals_settle_at",
        "commits",
        "unresolved_threads",
    }
)


def describe_facts(reading: Reading) -> list[str]:
    """The facts as short lines, one per kind, in the order they were fetched."""
    facts = reading.facts
    labels = ", ".join(facts.labels) if facts.labels else "none"
    lines = [
        f"MR: author {facts.author.username or '?'}; labels {labels}; "
        f"{_yes_no(facts.draft, 'draft', 'not a draft')}; "
        f"pipeline {_pipeline(facts)}; "
        f"{_yes_no(facts.has_conflicts, 'has conflicts', 'no conflicts')}; "
        f"blocking threads {_yes_no(facts.blocking_discussions_resolved, 'resolved', 'open')}"
    ]
    if facts.changed_files is not None:
        files = facts.changed_files
        added = sum(f.additions for f in files)
        removed = sum(f.deletions for f in files)
        paths = [" → ".join(f.paths) if f.renamed_file else f.new_path for f in files]
        cut = (
            ""
            if facts.paths_complete
            else f" (GitLab listed {len(files)} of {facts.changes_count})"
        )
        if facts.paths_complete and not facts.line_counts_exact:
            cut = " (some line counts hidden by GitLab)"
        shown = f": {listing(paths, 5)}" if paths else ""
        lines.append(f"diffs: {plural(len(files), 'file')}, +{added} -{removed}{cut}{shown}")
    if facts.approved_by is not None:
        names = ", ".join(u.username for u in facts.approved_by) or "none"
        if facts.unsettled_approvers:
            names += f" ({', '.join(sorted(facts.unsettled_approvers))} before the last push)"
        lines.append(f"approvals: {names}")
    if facts.commits is not None:
        first = [f"{c.sha[:8]} {c.message.partition(chr(10))[0][:50]}" for c in facts.commits]
        shown = f": {listing(first, 3)}" if first else ""
        lines.append(f"commits: {len(facts.commits)}{shown}")
    if facts.unresolved_threads is not None:
        lines.append(f"discussions: {plural(facts.unresolved_threads, 'unresolved thread')}")
    for group, members in sorted(facts.group_members.items()):
        names = listing(sorted(members.members), 8) if members.members else "nobody"
        lines.append(f"members of {group}: {names}")
    # Any other optional fact (one added since these lines were written): shown as it is.
    for field in dataclasses.fields(facts):
        value = getattr(facts, field.name)
        if field.default is None and field.name not in _SHOWN and value is not None:
            lines.append(f"{field.name.replace('_', ' ')}: {value}")
    if reading.listed is not None:
        checks = [f"{c.name} {c.status}" for c in reading.listed]
        lines.append(f"status checks: {', '.join(checks) or 'none listed for this MR'}")
    else:
        lines.append(f"status checks: not readable: {reading.listed_problem}")
    return lines


def summary(verdicts: list[Verdict]) -> str:
    failed = [v for v in verdicts if v.status == "failed"]
    passed = len(verdicts) - len(failed)
    outside = sum(1 for v in verdicts if not v.applicable)
    tail = f" ({outside} not applicable)" if outside else ""
    text = f"{plural(len(verdicts), 'policy', 'policies')}: {passed} passed{tail}"
    text += f", {len(failed)} failed"
    if failed:
        text += f" ({', '.join(v.check for v in failed)})"
    return text


async def _explain(
    settings: Settings, project: int | str, iid: int, out: TextIO, color: bool
) -> int:
    central = PolicyStore(settings.policy_dir).load()
    reading = await read_mr(settings, project, iid, central)
    policy_set = reading.policies
    facts = reading.facts

    # Everything from GitLab is made printable before it is coloured (bot/terminal.py); `out`
    # is a TerminalStream too, for whatever is not coloured.
    def bold(text: str) -> str:
        return f"{_BOLD}{printable(text)}{_RESET}" if color else printable(text)

    def dim(text: str) -> str:
        return f"{_DIM}{printable(text)}{_RESET}" if color else printable(text)

    writes = [method for method, _ in reading.requests if method not in ("GET", "HEAD")]
    print(bold(f"{facts.project_path}!{facts.iid}: {facts.title}"), file=out)
    print(
        printable(
            f"  {facts.state}, {facts.source_branch} → {facts.target_branch}, "
            f"head {facts.sha[:12]}, GitLab {reading.version}"
        ),
        file=out,
    )
    if facts.web_url:
        print(dim(f"  {facts.web_url}"), file=out)
    repository = [reading.repository] if reading.repository else []
    fetched = ", ".join(["MR", "status checks", *repository, *reading.fetched])
    requests = plural(len(reading.requests), "request")
    print(
        f"\n{bold('facts fetched')}: {fetched} "
        f"({requests}, {'all reads' if not writes else str(len(writes)) + ' writes'})",
        file=out,
    )
    for line in describe_facts(reading):
        print(f"  {printable(line)}", file=out)
    for name, advice in sorted(facts.unreadable.items()):
        print(printable(f"  could not read {name}: {advice}"), file=out)
    shown = {c.name: c.status for c in reading.listed or []}
    verdicts = []
    for policy in policy_set.policies:
        verdict = judge(policy, facts)
        verdicts.append(verdict)
        if reading.listed is None:
            where = "status checks not readable"
        elif policy.check in shown:
            where = f"GitLab shows {shown[policy.check]}"
        else:
            where = "not a status check of this MR"
        print(f"\n{bold(policy.check)} {dim(f'({policy.path}) — {where}')}", file=out)
        print(render_verdict(verdict, color=color), file=out)
    print(f"\n{printable(summary(verdicts))}", file=out)
    unmatched = sorted(set(shown) - set(policy_set.by_check))
    if unmatched:
        print(printable(f"status checks with no policy here: {', '.join(unmatched)}"), file=out)
    return 0


def explain(settings: Settings, reference: str, *, color: bool, out: TextIO = sys.stdout) -> int:
    """Run explain; errors are one `error: ...` line on stderr and exit status 1 (2: usage)."""
    from bot.gitlab.client import GitLabError

    try:
        project, iid = parse_reference(reference)
    except ValueError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_explain(settings, project, iid, out, color))
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: invalid policy: {printable(problem)}", file=sys.stderr)
        return 1
    except (ExplainError, OSError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 1
    except GitLabError as exc:
        print(f"error: {printable(exc.advice())} ({printable(exc.path)})", file=sys.stderr)
        return 1

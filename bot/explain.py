"""`python -m bot explain group/app!42`: judge a live MR with every policy, read-only.

It reads exactly what the service would read and prints each policy's rule tree with its
evidence, plus the facts it fetched, so a policy author can see why a check is red without
touching GitLab's state.
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import TextIO

import aiohttp

from bot.config import Settings
from bot.decide import applies, needs_of
from bot.fetch import GroupDirectory, base_facts, merge_facts, read_optional
from bot.gitlab import GitLab, GitLabError
from bot.policy import evaluate, render_verdict
from bot.policy.model import PolicyLoadError
from bot.policy_store import PolicyStore

_REFERENCE = re.compile(r"^(?P<project>[^!\s]+)!(?P<iid>\d+)$")


def parse_reference(text: str) -> tuple[int | str, int]:
    """`group/app!42` or `17!42` → (project, iid); raises ValueError with a usable message."""
    match = _REFERENCE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not PROJECT!IID (e.g. group/app!42 or 17!42)")
    project = match["project"]
    return (int(project) if project.isdigit() else project), int(match["iid"])


async def _explain(
    settings: Settings, project: int | str, iid: int, out: TextIO, color: bool
) -> int:
    store = PolicyStore(settings.policy_dir)
    policy_set = store.load()
    async with aiohttp.ClientSession() as session:
        gitlab = GitLab(
            session,
            url=settings.gitlab_url,
            token=settings.gitlab_token,
            timeout=settings.gitlab_timeout,
        )
        await gitlab.detect_version()
        mr, listed = await asyncio.gather(
            gitlab.merge_request(project, iid), gitlab.status_checks(project, iid)
        )
        facts = base_facts(mr, project_path=project if isinstance(project, str) else None)
        scoped = [p for p in policy_set.policies if applies(p, facts)]
        needs = needs_of(scoped)
        groups = GroupDirectory(gitlab)
        facts = merge_facts(
            facts, await read_optional(gitlab, groups, facts.project_id, iid, needs)
        )
    shown = {str(c.get("name")): str(c.get("status")) for c in listed}
    print(f"{facts.project_path}!{facts.iid} at {facts.sha[:12]} — {facts.title!r}", file=out)
    print(
        f"  state {facts.state}, {facts.source_branch} → {facts.target_branch}, "
        f"GitLab {gitlab.version}",
        file=out,
    )
    print(
        f"  facts fetched: MR, status checks{''.join(', ' + n for n in needs.describe())}", file=out
    )
    for policy in policy_set.policies:
        verdict = evaluate(policy, facts)
        status = shown.get(policy.check)
        where = f"GitLab shows {status}" if status else "not a status check of this MR"
        print(f"\n{policy.check} ({policy.path}) — {where}", file=out)
        print(render_verdict(verdict, color=color), file=out)
    unmatched = sorted(set(shown) - set(policy_set.by_check))
    if unmatched:
        print(f"\nstatus checks with no policy here: {', '.join(unmatched)}", file=out)
    return 0


def explain(settings: Settings, reference: str, *, color: bool, out: TextIO = sys.stdout) -> int:
    try:
        project, iid = parse_reference(reference)
        return asyncio.run(_explain(settings, project, iid, out, color))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: invalid policy: {problem}", file=sys.stderr)
        return 1
    except GitLabError as exc:
        print(f"error: {exc.advice()} ({exc.path})", file=sys.stderr)
        return 1

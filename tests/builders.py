"""The builders tests share, in one place: merge requests seeded in the fake GitLab, policies,
rule outcomes, and the service's `Decision` records.

A builder gives a plain, valid default for everything a test does not care about; a test names
only what it is about (`decision(policy, gitlab_status="passed")`, `seed_mr(gitlab, title="x")`).
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bot.keys import MRKey
from bot.policy import compile_rule, evaluate, load_policy_text, make_facts
from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome, Policy, Verdict
from bot.service.decide import Action, Decision
from bot.service.policy_store import PolicyStore
from tests.fakegitlab import JSON, FakeGitLab

# When a built Decision was made, unless a test says otherwise.
AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SHA = "1" * 40

# -- the fake GitLab -----------------------------------------------------------------------------


def seed_project(
    gitlab: FakeGitLab, checks: Iterable[str] = (), *, project_id: int = 1, path: str = "acme/app"
) -> None:
    """Project `path` and its status checks, unless the project exists already. MRs added after
    it get the `pending` rows GitLab 16.5+ stores for every check at MR creation."""
    if project_id not in gitlab.projects:
        gitlab.add_project(project_id, path)
        for check in checks:
            gitlab.add_status_check(project_id, check)


def seed_mr(
    gitlab: FakeGitLab,
    checks: Iterable[str] = (),
    *,
    project_id: int = 1,
    path: str = "acme/app",
    iid: int = 1,
    **fields: Any,
) -> JSON:
    """MR !`iid` of project `path`: "feat: add login" from branch `feature` (where
    payloads.merge_request_hook says it comes from) unless `fields` (FakeGitLab.add_mr's) say
    otherwise. A project that does not exist yet is added with its `checks`, after the MR, as a
    check registered on an open MR is (no pending rows stored); use `seed_project` first for
    checks that predate the MR."""
    new = project_id not in gitlab.projects
    if new:
        gitlab.add_project(project_id, path)
    mr = gitlab.add_mr(
        project_id, iid, **{"title": "feat: add login", "source_branch": "feature", **fields}
    )
    if new:
        for check in checks:
            gitlab.add_status_check(project_id, check)
    return mr


def running_pipeline(sha: str, id: int = 5) -> JSON:
    """An MR's `head_pipeline` for `sha`, still running (so `pipeline: success` fails)."""
    return {"id": id, "sha": sha, "status": "running"}


# -- policies and outcomes -------------------------------------------------------------------------


def policy_from(text: str, path: str = "policy.yml") -> Policy:
    """A policy from YAML text (dedented, so it can be written indented in a test)."""
    return load_policy_text(textwrap.dedent(text), path)


def shipped(policy_dir: Path, check: str) -> Policy:
    """The policy for `check` in the folder `policy_dir`, loaded as the service loads it."""
    policy = PolicyStore(policy_dir).load().get(check)
    assert policy is not None, f"no policy for {check} in {policy_dir}"
    return policy


def judge(rule: str, **facts: object) -> Outcome:
    """One rule (YAML text) judged on facts built by `make_facts`."""
    return compile_rule(rule).evaluate(make_facts(**facts))  # type: ignore[arg-type]


# -- the service's records -----------------------------------------------------------------------


def decision(
    policy: Policy,
    *,
    verdict: Verdict | None = None,
    facts: MergeRequestFacts | Mapping[str, Any] | None = None,
    key: MRKey = MRKey(1, 1),  # noqa: B008 (frozen, so a shared default is safe)
    project_path: str = "acme/app",
    sha: str = SHA,
    check_id: int = 1,
    gitlab_status: str = "pending",
    action: Action = "posted",
    trigger: str = "test",
    at: dt.datetime = AT,
    tampered: bool = False,
) -> Decision:
    """What the evaluator decided about `policy`'s check on MR `key`: `verdict` as given, else
    the policy judged on `facts` (a MergeRequestFacts, or make_facts' keywords)."""
    if verdict is None:
        if not isinstance(facts, MergeRequestFacts):
            facts = make_facts(**dict(facts or {}))  # type: ignore[arg-type]
        verdict = evaluate(policy, facts)
    return Decision(
        key=key,
        project_path=project_path,
        sha=sha,
        check=policy.check,
        check_id=check_id,
        verdict=verdict,
        gitlab_status=gitlab_status,  # type: ignore[arg-type]
        action=action,
        policy=policy,
        trigger=trigger,
        at=at,
        tampered=tampered,
    )

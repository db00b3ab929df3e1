"""The groups and users policies name, checked against GitLab: a typo ("acme/dba" for
"acme/dbas") or a group the bot's token cannot see makes every rule that consults it undecided,
so `serve` and `validate` say so up front, naming the file, line and kind of thing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bot.gitlab.client import GitLab, GitLabError, project_ref
from bot.policy.model import Policy, Rule


@dataclass(frozen=True)
class Reference:
    """A group or user a policy names, where."""

    kind: str  # "group" or "user"
    name: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _walk(rules: Iterable[Rule]) -> Iterator[Rule]:
    for rule in rules:
        yield rule
        subrules = getattr(rule, "subrules", None)
        if subrules is not None:
            yield from _walk(subrules())


def references(policies: Iterable[Policy]) -> list[Reference]:
    """Every group and user named in `author:` or `approvals.from:`, once per place."""
    found: dict[tuple[str, str, str, int], Reference] = {}
    for policy in policies:
        for rule in _walk((*policy.applies_to, *policy.rules)):
            people = getattr(rule, "people", None)
            if people is None:
                continue
            for kind, names in (("group", people.groups), ("user", sorted(people.users))):
                for name in names:
                    ref = Reference(kind, name, policy.path, rule.line)
                    found[(kind, name, ref.path, ref.line)] = ref
    return list(found.values())


async def _problem(gitlab: GitLab, kind: str, name: str) -> str | None:
    """Why GitLab cannot show this group or user to the bot, or None."""
    try:
        if kind == "group":
            await gitlab.get(f"/groups/{project_ref(name)}")
            return None
        users = await gitlab.get("/users", {"username": name})
    except GitLabError as exc:
        if exc.transient:
            return f"could not be checked: {exc.advice()}"
        return exc.advice()
    if not users:
        return "GitLab has no such user"
    return None


async def unreadable(gitlab: GitLab, policies: Iterable[Policy]) -> list[str]:
    """One line per place a policy names a group or user GitLab cannot show:
    `policies/dba.yml:7: group acme/dba: GitLab answered 404: ...`."""
    refs = references(policies)
    names = sorted({(r.kind, r.name) for r in refs})
    answers = await asyncio.gather(*(_problem(gitlab, kind, name) for kind, name in names))
    problems = {name: why for name, why in zip(names, answers, strict=True) if why}
    return [
        f"{r.where()}: {r.kind} {r.name}: {problems[(r.kind, r.name)]}"
        for r in sorted(refs, key=lambda r: (r.path, r.line, r.kind, r.name))
        if (r.kind, r.name) in problems
    ]

"""Who a rule accepts (`users`, `groups`, `inherited`), shared by `author` and `approvals`."""

from __future__ import annotations

from dataclasses import dataclass

from yaml.nodes import Node

from bot.policy.facts import FactNeeds, GroupMembers, MergeRequestFacts
from bot.policy.model import UnreadableFact
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate
from bot.policy.predicates.common import (
    optional_fact,
)


def group_members(rule: Predicate, facts: MergeRequestFacts, group: str) -> GroupMembers:
    found = facts.group_members.get(group)
    return optional_fact(rule, facts, found, f"members of {group}", f"members of group {group}")


@dataclass(frozen=True)
class People:
    """`{users: [...], groups: [...], inherited: false}`: lower-case usernames and group paths.

    A group means its own members and its subgroups' members who can approve (Developer or
    higher, active); `inherited: true` also counts people GitLab lists for the group through a
    parent group or a group shared into it (`members/all`)."""

    users: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    inherited: bool = False

    @property
    def restricted(self) -> bool:
        return bool(self.users or self.groups)

    @property
    def needs(self) -> FactNeeds:
        return FactNeeds(groups=frozenset(self.groups))

    def phrase(self) -> str:
        """`acme/security or alice, bob` — who a rule accepts, for evidence and fixes."""
        parts = list(self.groups)
        if self.users:
            parts.append(", ".join(sorted(self.users)))
        return " or ".join(parts)

    def outsider(self) -> str:
        """`is not in acme/security` — why someone is not among the accepted people."""
        in_groups = f"in {' or '.join(self.groups)}"
        one_of = f"one of {', '.join(sorted(self.users))}"
        if self.users and self.groups:
            return f"is neither {in_groups} nor {one_of}"
        return f"is not {in_groups if self.groups else one_of}"

    def judge(self, rule: Predicate, facts: MergeRequestFacts, username: str) -> Membership:
        """Whether `username` (lower case) is one of these people, and why (not)."""
        if username in self.users:
            return Membership(True, "listed")
        unreadable: list[str] = []
        notes: list[str] = []
        for group in self.groups:
            try:
                members = group_members(rule, facts, group)
            except UnreadableFact as exc:
                unreadable.append(f"cannot read members of {group}: {exc.reason}")
                continue
            if username in members.members:
                return Membership(True, f"in {group}")
            if username in members.inherited:
                if self.inherited:
                    return Membership(True, f"in {group} (inherited)")
                notes.append(
                    f"is in {group} only through a parent or shared group "
                    "(`inherited: true` counts those)"
                )
            elif username in members.ineligible:
                notes.append(f"is {members.ineligible[username]} in {group}")
        if unreadable:
            return Membership(False, "; ".join(unreadable), unknown=True)
        return Membership(False, notes[0] if notes else self.outsider())


@dataclass(frozen=True)
class Membership:
    """One person against a `People` rule: counted or not, the phrase that says why, and whether
    it cannot be known (a group GitLab would not show)."""

    counted: bool
    why: str
    unknown: bool = False


def compile_people(ctx: Ctx, node: Node, what: str) -> People | None:
    """`{users: [...], groups: [...], inherited: bool}` -> People."""
    entries = ctx.mapping(node, what)
    if entries is not None and not entries:
        ctx.error(node, f"{what} needs `users`, `groups` or both")
        return None
    entries = ctx.known(entries, ("users", "groups", "inherited"), what)
    if entries is None:
        return None
    users: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    inherited: bool | None = False
    ok = True
    if "users" in entries:
        items = ctx.string_list(entries["users"].node, f"`{what}.users`", single_ok=True)
        ok = ok and items is not None
        users = frozenset(name.lstrip("@").lower() for name, _ in items or ())
    if "groups" in entries:
        items = ctx.string_list(entries["groups"].node, f"`{what}.groups`", single_ok=True)
        ok = ok and items is not None
        groups = tuple(dict.fromkeys(name.strip("/").lower() for name, _ in items or ()))
    if "inherited" in entries:
        inherited = ctx.boolean(entries["inherited"].node, f"`{what}.inherited`")
        ok = ok and inherited is not None
    if ok and not (users or groups):
        ctx.error(node, f"{what} needs `users`, `groups` or both")
        return None
    return People(users, groups, bool(inherited)) if ok else None

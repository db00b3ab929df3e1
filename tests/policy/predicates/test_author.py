"""`author`: users (case-insensitive) and groups."""

from __future__ import annotations

import pytest

from bot.policy import (
    MissingFactError,
    compile_rule,
    make_facts,
)
from tests.builders import judge


def test_author_users_are_case_insensitive() -> None:
    outcome = judge("author: {users: [Alice, bob]}", author="alice")
    assert outcome.passed
    assert outcome.evidence == "author: alice is one of alice, bob"
    failed = judge("author: {users: [alice]}", author="mallory")
    assert not failed.passed
    assert failed.evidence == "author: mallory is not one of alice"


def test_author_groups() -> None:
    rule = "author: {groups: [Acme/Platform]}"
    members = {"acme/platform": ["carol"]}
    outcome = judge(rule, author="carol", group_members=members)
    assert outcome.evidence == "author: carol is in acme/platform"
    failed = judge(rule, author="dave", group_members=members)
    assert failed.evidence == "author: dave is not in acme/platform"


def test_author_group_needs_are_declared_and_missing_members_are_a_bug() -> None:
    rule = compile_rule("author: {groups: [Acme/Platform]}")
    assert rule.needs.groups == frozenset({"acme/platform"})
    with pytest.raises(MissingFactError, match="members of group acme/platform"):
        rule.evaluate(make_facts(author="carol"))

"""`approvals`: count, from groups and users, the author excluded by default."""

from __future__ import annotations

import pytest

from bot.policy import (
    MissingFactError,
    compile_rule,
    make_facts,
)
from tests.builders import judge

SECURITY = "approvals: {count: 1, from: {groups: [acme/security]}}"


MEMBERS = {"acme/security": ["alice", "sam"]}


def test_approvals_from_a_group() -> None:
    outcome = judge(SECURITY, author="bob", approved_by=["sam"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == "approvals: 1 of 1 from acme/security (sam)"


def test_author_approving_own_mr_does_not_count() -> None:
    outcome = judge(SECURITY, author="alice", approved_by=["alice"], group_members=MEMBERS)
    assert not outcome.passed
    assert outcome.evidence == (
        "approvals: 0 of 1 from acme/security (alice approved but is the author)"
    )
    assert outcome.fix == "get 1 more approval from acme/security"


def test_approver_outside_the_group_is_named() -> None:
    outcome = judge(SECURITY, author="alice", approved_by=["bob", "Sam"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == (
        "approvals: 1 of 1 from acme/security (Sam; bob approved but is not in acme/security)"
    )


def test_no_approvals_yet_and_plural_fix() -> None:
    outcome = judge("approvals: {count: 2}", approved_by=[])
    assert outcome.evidence == "approvals: 0 of 2 (no approvals yet)"
    assert outcome.fix == "get 2 more approvals"


def test_exclude_author_false_counts_the_author() -> None:
    rule = "approvals: {count: 1, exclude_author: false}"
    assert judge(rule, author="alice", approved_by=["alice"]).passed
    assert not judge("approvals: {count: 1}", author="alice", approved_by=["ALICE"]).passed


def test_approvals_from_users_and_groups() -> None:
    rule = "approvals: {count: 2, from: {users: [lead], groups: [acme/security]}}"
    outcome = judge(rule, approved_by=["lead", "sam", "eve"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == (
        "approvals: 2 of 2 from acme/security or lead "
        "(lead, sam; eve approved but is neither in acme/security nor one of lead)"
    )


def test_duplicate_approvals_count_once() -> None:
    outcome = judge("approvals: {count: 2}", approved_by=["bob", "bob"])
    assert not outcome.passed
    assert outcome.evidence == "approvals: 1 of 2 (bob)"


def test_approvals_needs() -> None:
    rule = compile_rule(SECURITY)
    assert rule.needs.approvals and rule.needs.groups == frozenset({"acme/security"})
    with pytest.raises(MissingFactError, match="approvals"):
        rule.evaluate(make_facts(approved_by=None, group_members=MEMBERS))

"""`commits`: message patterns and sign-offs."""

from __future__ import annotations

import pytest

from bot.policy import (
    MissingFactError,
    compile_rule,
    make_facts,
)
from tests.builders import judge


def test_commits_message() -> None:
    rule = "commits: {message: '^(feat|fix)'}"
    held = judge(rule, commits=["feat: a", "fix: b"])
    assert held.passed
    assert held.evidence == "commits: all 2 commits match `^(feat|fix)`"
    failed = judge(rule, commits=[{"sha": "a" * 40, "message": "wip\n\nmore"}, "fix: b"])
    assert not failed.passed
    assert failed.evidence == (
        'commits: 1 of 2 commits does not match `^(feat|fix)`: aaaaaaaa "wip"'
    )
    assert failed.fix == "reword commits to match `^(feat|fix)`"


def test_commits_signed_off() -> None:
    signed = "fix: b\n\nSigned-off-by: Bob <bob@example.com>"
    rule = "commits: {signed_off: true}"
    assert judge(rule, commits=[signed]).evidence == "commits: the only commit is signed off"
    failed = judge(rule, commits=[signed, {"sha": "b" * 40, "message": "fix: c"}])
    assert not failed.passed
    assert failed.evidence == "commits: 1 of 2 commits lacks a Signed-off-by line: bbbbbbbb"
    assert failed.fix == "sign off every commit (git commit -s)"


def test_commits_empty_and_needs() -> None:
    assert judge("commits: {signed_off: true}", commits=[]).evidence == (
        "commits: the MR has no commits"
    )
    rule = compile_rule("commits: {message: x}")
    assert rule.needs.commits
    with pytest.raises(MissingFactError, match="commits"):
        rule.evaluate(make_facts(commits=None))

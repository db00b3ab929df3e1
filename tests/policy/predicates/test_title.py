"""`title` and `description`: the regex searches the text; evidence quotes it, clipped."""

from __future__ import annotations

import time

from bot.policy import (
    compile_rule,
    make_facts,
)
from tests.builders import judge


def test_title_matches() -> None:
    outcome = judge("title: '^feat'", title="feat: add x")
    assert outcome.passed
    assert outcome.rule == "title"
    assert outcome.evidence == 'title: "feat: add x" matches `^feat`'
    assert outcome.fix is None


def test_title_does_not_match() -> None:
    outcome = judge("title: '^feat'", title="Add x")
    assert not outcome.passed
    assert outcome.evidence == 'title: "Add x" does not match `^feat`'
    assert outcome.fix == "change the title to match `^feat`"


def test_title_regex_is_a_search_and_flags_work() -> None:
    assert judge("title: 'JIRA-\\d+'", title="fix: crash (JIRA-12)").passed
    assert judge("title: '(?i)^wip'", title="WIP: later").passed
    assert not judge("title: '^wip'", title="WIP: later").passed


def test_long_title_is_clipped_in_evidence() -> None:
    outcome = judge("title: '^feat'", title="x" * 500)
    assert len(outcome.evidence) < 120
    assert "…" in outcome.evidence


def test_named_rule_keeps_its_name() -> None:
    outcome = judge("{name: conventional title, title: '^feat'}", title="nope")
    assert outcome.rule == "conventional title"
    assert outcome.evidence.startswith("title: ")


def test_description() -> None:
    outcome = judge("description: 'Closes #\\d+'", description="Closes #12")
    assert outcome.passed
    assert outcome.evidence == 'description: the description "Closes #12" matches `Closes #\\d+`'
    empty = judge("description: 'Closes #\\d+'", description="")
    assert not empty.passed
    assert empty.evidence == "description: the empty description does not match `Closes #\\d+`"
    assert empty.fix == "change the description to match `Closes #\\d+`"


def test_catastrophic_regex_on_a_huge_title_returns_promptly() -> None:
    rule = compile_rule("title: '(a+)+$'")
    facts = make_facts(title="a" * 100_000 + "!")
    started = time.perf_counter()
    outcome = rule.evaluate(facts)
    assert time.perf_counter() - started < 0.5
    assert not outcome.passed


def test_catastrophic_description_regex_returns_promptly() -> None:
    rule = compile_rule("description: '^(\\w+\\s?)*$'")
    facts = make_facts(description="word " * 20_000 + "!")
    started = time.perf_counter()
    assert not rule.evaluate(facts).passed
    assert time.perf_counter() - started < 0.5

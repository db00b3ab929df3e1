"""`threads_resolved`."""

from __future__ import annotations

from bot.policy import (
    compile_rule,
    make_facts,
)


def test_threads_resolved_counts_threads() -> None:
    rule = compile_rule("threads_resolved: true")
    assert rule.needs.discussions
    assert rule.evaluate(make_facts(unresolved_threads=0)).evidence == (
        "threads_resolved: no unresolved threads"
    )
    two = rule.evaluate(make_facts(unresolved_threads=2))
    assert not two.passed
    assert two.evidence == "threads_resolved: 2 unresolved threads"
    assert two.fix == "resolve the 2 unresolved threads"
    one = rule.evaluate(make_facts(unresolved_threads=1))
    assert one.evidence == "threads_resolved: 1 unresolved thread"


def test_threads_resolved_falls_back_to_gitlab_flag() -> None:
    rule = compile_rule("threads_resolved: true")
    unknown = make_facts(unresolved_threads=None, blocking_discussions_resolved=False)
    outcome = rule.evaluate(unknown)
    assert not outcome.passed
    assert outcome.evidence == "threads_resolved: GitLab reports unresolved blocking threads"
    ok = make_facts(unresolved_threads=None, blocking_discussions_resolved=True)
    assert rule.evaluate(ok).passed

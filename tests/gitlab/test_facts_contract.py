"""Adding a fact is a field and a FactNeeds flag in bot/policy/facts.py and a source (with its
reader) in bot/gitlab/snapshot.py: nothing else has to learn about it. These tests fail when
one of the two is added without the other, or when the test tooling stops taking new facts."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from pathlib import Path

import pytest

from bot.gitlab.snapshot import SOURCES, _fact_name
from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.testing import GENERIC_FACTS, make_facts, parse_test_file


def test_every_fact_flag_has_a_source_that_reads_it() -> None:
    flags = [f.name for f in dataclasses.fields(FactNeeds) if f.name != "groups"]
    served = {flag for source in SOURCES for flag in source.flags}
    assert sorted(served) == sorted(flags)


def test_a_refused_read_is_filed_under_the_fact_that_needs_it() -> None:
    assert _fact_name("changed_files") == "diffs"
    assert _fact_name("newest_version") == "approvals"
    assert _fact_name("group:acme/dba") == "members of acme/dba"
    assert set(FactNeeds(approvals=True, diffs=True).describe()) >= {"approvals", "diffs"}


def test_facts_of_a_plain_kind_need_no_code_in_the_test_tooling(tmp_path: Path) -> None:
    """Every bool, int, str or string-collection field of MergeRequestFacts can be given to
    make_facts and in a *.test.yaml case by its own name."""
    hints = typing.get_type_hints(MergeRequestFacts)
    assert "stale_pipeline_sha" in GENERIC_FACTS and "unsettled_approvers" in GENERIC_FACTS
    for name, kind in GENERIC_FACTS.items():
        value = {"bool": True, "int": 3, "str": "x", "strings": ["a", "b"]}[kind]
        facts = make_facts(**{name: value})
        shown = getattr(facts, name)
        assert shown == value or sorted(shown) == value, (name, hints[name])
    with pytest.raises(TypeError, match="no fact 'nonsense'"):
        make_facts(nonsense=1)
    (tmp_path / "p.yml").write_text("check: green\nrequire:\n  - pipeline: success\n")
    case = tmp_path / "p.test.yaml"
    case.write_text(
        textwrap.dedent(
            """
            policy: green
            cases:
              - name: an old head's pipeline is not this head's
                mr: {pipeline: null, stale_pipeline_sha: 9f8e7d6c, unsettled_approvers: [carol]}
                expect: failed
            """
        )
    )
    parsed = parse_test_file(case)
    assert not parsed.problems, parsed.problems
    assert parsed.cases[0].mr["stale_pipeline_sha"] == "9f8e7d6c"

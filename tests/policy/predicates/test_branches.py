"""`target_branch` and `source_branch`: globs like GitLab's wildcards."""

from __future__ import annotations

from tests.builders import judge


def test_target_branch_glob_and_list() -> None:
    assert judge("target_branch: main", target_branch="main").passed
    outcome = judge("target_branch: [main, 'release/*']", target_branch="release/1.2")
    assert outcome.evidence == "target_branch: release/1.2 matches main, release/*"
    failed = judge("target_branch: [main, 'release/*']", target_branch="dev")
    assert not failed.passed
    assert failed.evidence == "target_branch: dev is not one of main, release/*"
    assert failed.fix == "use a target branch matching main, release/*"


def test_branch_star_matches_slashes_like_gitlab_wildcards() -> None:
    assert judge("target_branch: 'release/*'", target_branch="release/2026/q1").passed
    assert not judge("target_branch: 'release/*'", target_branch="prerelease/1").passed
    assert not judge("target_branch: main", target_branch="main2").passed


def test_source_branch() -> None:
    assert judge("source_branch: 'feature/*'", source_branch="feature/x").passed
    failed = judge("source_branch: 'feature/*'", source_branch="hack")
    assert failed.evidence == "source_branch: hack is not one of feature/*"

"""`no_conflicts`."""

from __future__ import annotations

from tests.builders import judge


def test_no_conflicts() -> None:
    assert judge("no_conflicts: true", has_conflicts=False).evidence == (
        "no_conflicts: no merge conflicts"
    )
    failed = judge("no_conflicts: true", has_conflicts=True)
    assert not failed.passed
    assert failed.evidence == "no_conflicts: the MR has merge conflicts"
    assert failed.fix == "rebase or merge the target branch and resolve the conflicts"

"""`changed_lines` and `changed_files_count`: bounds on the size of the change."""

from __future__ import annotations

from tests.builders import judge


def test_changed_lines() -> None:
    files = [{"path": "a", "additions": 300, "deletions": 100}, {"path": "b", "additions": 1}]
    failed = judge("changed_lines: {max: 400}", changed_files=files)
    assert not failed.passed
    assert failed.evidence == "changed_lines: 401 > max 400"
    assert failed.fix == "reduce the change to at most 400 lines"
    assert judge("changed_lines: {max: 401}", changed_files=files).passed
    too_small = judge("changed_lines: {min: 500}", changed_files=files)
    assert too_small.evidence == "changed_lines: 401 < min 500"
    held = judge("changed_lines: {min: 1, max: 1000}", changed_files=files)
    assert held.evidence == "changed_lines: 401 within min 1, max 1000"


def test_changed_files_count() -> None:
    files = ["a", {"old_path": "b", "new_path": "c"}, {"path": "d", "deleted": True}]
    outcome = judge("changed_files_count: {max: 3}", changed_files=files)
    assert outcome.passed
    assert outcome.evidence == "changed_files_count: 3 <= max 3"
    failed = judge("changed_files_count: {max: 2}", changed_files=files)
    assert failed.fix == "reduce the change to at most 2 files"
    empty = judge("changed_files_count: {min: 1}", changed_files=[])
    assert empty.evidence == "changed_files_count: 0 < min 1"

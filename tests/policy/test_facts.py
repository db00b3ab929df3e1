"""The facts model and its helpers."""

from __future__ import annotations

from bot.policy.facts import ChangedFile


def test_changed_file_paths_of_facts() -> None:
    assert ChangedFile("a", "b", renamed_file=True).paths == ("a", "b")
    assert ChangedFile("a", "a", deleted_file=True).paths == ("a",)

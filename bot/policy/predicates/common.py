"""Helpers the predicates share: reading optional facts (GitLab may refuse them), and how
much of the diff GitLab listed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bot.policy.facts import ChangedFile, MergeRequestFacts
from bot.policy.model import MissingFactError, UnreadableFact
from bot.policy.predicates.base import Predicate, plural


def optional_fact(
    rule: Predicate, facts: MergeRequestFacts, value: Any, fact: str, what: str
) -> Any:
    """An optional fact's value; GitLab's refusal makes the rule undecided (UnreadableFact),
    a fact nobody fetched is a bug (MissingFactError)."""
    if value is None:
        if fact in facts.unreadable:
            raise UnreadableFact(fact, facts.unreadable[fact])
        raise MissingFactError(rule.name, what)
    return value


def changed_files(rule: Predicate, facts: MergeRequestFacts) -> tuple[ChangedFile, ...]:
    return optional_fact(rule, facts, facts.changed_files, "diffs", "changed files (diffs)")


def listed(facts: MergeRequestFacts) -> str:
    """How much of the change GitLab listed, for evidence: `GitLab listed 1000 of 1000+ files`."""
    count = len(facts.changed_files or ())
    if facts.changes_count and facts.changes_count != str(count):
        return f"GitLab listed {count} of {facts.changes_count} files"
    return f"GitLab listed {plural(count, 'file')}, but not every change"


SPLIT_FIX = "split the change into smaller merge requests that GitLab can list in full"


def changed_paths(files: tuple[ChangedFile, ...]) -> Iterator[str]:
    """Every path the change touches: both sides of a rename, deleted files too."""
    for changed in files:
        yield from changed.paths

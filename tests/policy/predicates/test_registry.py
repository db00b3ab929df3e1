"""Every key the policy language registers has a test module that uses it, where the tests mirror
the code: a predicate of bot/policy/predicates/<module>.py in tests/policy/predicates/
test_<module>.py, a combinator of bot/policy/combinators.py in tests/policy/test_combinators.py."""

from __future__ import annotations

import re
from pathlib import Path

import bot.policy  # noqa: F401  (imports every predicate module, which registers its keys)
from bot.policy.predicates.base import REGISTRY

TESTS = Path(__file__).resolve().parents[2]


def mirror_of(module: str) -> Path:
    """bot.policy.predicates.size -> tests/policy/predicates/test_size.py."""
    *package, name = module.split(".")[1:]
    return TESTS.joinpath(*package, f"test_{name}.py")


def uses(text: str, key: str) -> bool:
    """Whether policy YAML in `text` uses `key` as a rule: `key:` not part of a longer name."""
    return re.search(rf"(?<![\w-]){re.escape(key)}:", text) is not None


def test_every_registered_key_has_a_test_module_that_uses_it() -> None:
    missing = []
    for key, predicate in sorted(REGISTRY.items()):
        path = mirror_of(predicate.__module__)
        if not path.is_file():
            missing.append(f"{key} ({predicate.__module__}): no {path.relative_to(TESTS.parent)}")
        elif not uses(path.read_text(), key):
            missing.append(f"{key}: {path.relative_to(TESTS.parent)} never uses `{key}:`")
    assert not missing, "\n".join(missing)


def test_the_check_sees_the_registry_and_reads_rules_as_policies_write_them() -> None:
    # Not vacuous: the registry holds the predicates and combinators of the language...
    assert {"title", "approvals", "freeze", "changed_lines", "all", "any", "not"} <= set(REGISTRY)
    # ...and a key is found as policies write it, never inside a longer name.
    assert uses("require:\n  - changed_files: ['a']", "changed_files")
    assert uses("{name: x, not: {draft: true}}", "not")
    assert not uses("only_changed_files: ['docs/**']", "changed_files")
    assert not uses("changed_files_count: {max: 3}", "changed_files")
    assert mirror_of("bot.policy.predicates.size") == TESTS / "policy/predicates/test_size.py"
    assert mirror_of("bot.policy.combinators") == TESTS / "policy/test_combinators.py"

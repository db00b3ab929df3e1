"""Repository policies over central floors, without HTTP: a repository can add to a central
policy, or replace a replaceable one, but never remove, weaken or make advisory a floor."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from bot.policy import make_facts
from bot.policy.evaluate import judge
from bot.policy.layers import compile_layer, layered
from bot.policy.loader import load_policy_text
from bot.policy.model import PolicySet, Verdict

SHA = "c" * 40
FOLDER = ".gitlab/status-checks"
FLOOR = """
check: security-review
require:
  - labels: {any: [security-approved]}
"""


def central(*texts: str) -> PolicySet:
    policies = [
        load_policy_text(textwrap.dedent(text), f"policies/p{n}.yml")
        for n, text in enumerate(texts)
    ]
    return PolicySet(
        policies=tuple(policies), digest="central", by_check={p.check: p for p in policies}
    )


def repository(**files: str) -> list[tuple[str, bytes]]:
    return [
        (f"{FOLDER}/{name}.yml", textwrap.dedent(text).encode()) for name, text in files.items()
    ]


def verdict_of(policies: PolicySet, check: str = "security-review", **facts: object) -> Verdict:
    policy = policies.get(check)
    assert policy is not None
    return judge(policy, make_facts(**{"title": "feat: x", **facts}))  # type: ignore[arg-type]


ATTEMPTS = {
    # Remove: the same check, with a rule anything passes.
    "remove": """
        check: security-review
        require:
          - draft: false
    """,
    # Weaken: the floor's rule turned around and offered as an alternative.
    "weaken": """
        check: security-review
        require:
          - any:
              - labels: {any: [security-approved]}
              - labels: {none: [security-approved]}
    """,
    # Narrow: a scope that leaves this MR out.
    "narrow": """
        check: security-review
        applies_to:
          target_branches: [nothing-is-called-this]
        require:
          - draft: false
    """,
    # Advisory: the same check, made advisory.
    "advisory": """
        check: security-review
        mode: advisory
        require:
          - labels: {any: [security-approved]}
    """,
    # Sideways: another file name, the same check.
    "renamed": """
        check: security-review
        require:
          - title: '.*'
    """,
}


@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_a_repository_cannot_remove_weaken_narrow_or_make_advisory_a_floor(attempt: str) -> None:
    floor = central(FLOOR)
    assert verdict_of(floor).status == "failed"  # the MR lacks the label: the floor fails it
    layer = compile_layer(SHA, repository(**{attempt: ATTEMPTS[attempt]}))
    assert not layer.broken, layer.broken
    verdict = verdict_of(layered(floor, layer))
    assert verdict.status == "failed"
    assert not verdict.advisory
    assert "labels: has none of security-approved [central policies/p0.yml]" in verdict.reason


def test_a_repository_adds_rules_to_a_floor_and_both_must_hold() -> None:
    layer = compile_layer(
        SHA,
        repository(
            extra="""
            check: security-review
            require:
              - name: ticket
                title: 'ACME-[0-9]+'
            """
        ),
    )
    policies = layered(central(FLOOR), layer)
    both = verdict_of(policies, labels=["security-approved"], title="feat: ACME-1 x")
    assert both.status == "passed"
    only_floor = verdict_of(policies, labels=["security-approved"])
    assert only_floor.status == "failed"
    assert only_floor.reason == (
        'ticket — title: "feat: x" does not match `ACME-[0-9]+` '
        f"[repository {FOLDER}/extra.yml@{SHA[:12]}]"
    )


def test_only_a_replaceable_floor_is_replaced() -> None:
    replaceable = FLOOR + "replaceable: true\n"
    layer = compile_layer(SHA, repository(mine=ATTEMPTS["remove"]))
    assert verdict_of(layered(central(replaceable), layer)).status == "passed"
    assert verdict_of(layered(central(FLOOR), layer)).status == "failed"


def test_a_repository_file_cannot_declare_itself_replaceable_or_define_a_check_twice() -> None:
    layer = compile_layer(
        SHA,
        repository(
            a="check: x\nreplaceable: true\nrequire:\n  - draft: false\n",
            b="check: y\nrequire:\n  - draft: false\n",
            c="check: y\nrequire:\n  - draft: true\n",
        ),
    )
    assert [str(p) for p in layer.problems] == [
        f"{FOLDER}/a.yml:1: `replaceable` is for central policies: remove it here",
        f"{FOLDER}/c.yml:1: duplicate check `y`: already defined in {FOLDER}/b.yml:1",
    ]
    policies = layered(central(), layer)
    assert verdict_of(policies, "x").status == "failed"
    assert verdict_of(policies, "y").status == "failed"


def test_a_repository_cannot_take_over_the_bots_own_policy_check() -> None:
    """`status-check-policies` validates and previews every later policy change: a merged
    repository file claiming it (by `check:` or by its name) fails it instead of replacing it."""
    reserved = "`status-check-policies` is the bot's own check of policy changes: remove it here"
    for name, text in (
        ("a", "check: status-check-policies\nrequire:\n  - draft: false\n"),
        ("status-check-policies", "require:\n  - draft: false\n"),
    ):
        layer = compile_layer(SHA, repository(**{name: text}))
        assert [str(p) for p in layer.problems] == [f"{FOLDER}/{name}.yml:1: {reserved}"]
        verdict = verdict_of(layered(central(), layer), "status-check-policies")
        assert verdict.status == "failed" and reserved in verdict.reason


def test_a_broken_repository_file_fails_the_floor_it_adds_to_but_no_other_check() -> None:
    layer = compile_layer(
        SHA, repository(broken="check: security-review\nrequire:\n  - lables: {any: [x]}\n")
    )
    other = "check: other\nrequire:\n  - draft: false\n"
    policies = layered(central(FLOOR, other), layer)
    verdict = verdict_of(policies, labels=["security-approved"])
    assert verdict.status == "failed"
    assert f"{FOLDER}/broken.yml:3: unknown predicate `lables`" in verdict.reason
    assert verdict_of(policies, "other").status == "passed"


def test_files_outside_the_folder_or_test_files_are_not_policies() -> None:
    layer = compile_layer(
        SHA,
        [
            (f"{FOLDER}/a.test.yaml", b"cases: []\n"),
            (f"{FOLDER}/sub/b.yml", b"check: b\nrequire:\n  - draft: false\n"),
            (f"{FOLDER}/.hidden.yml", b"check: h\nrequire:\n  - draft: false\n"),
            ("other/c.yml", b"check: c\nrequire:\n  - draft: false\n"),
        ],
    )
    assert layer.checks == frozenset() and layer.files == ()


def test_unreadable_policies_hold_every_check_a_repository_may_add_rules_to() -> None:
    """The repository may add rules to any check, so while it cannot be read none passes:
    no floor, a replaceable floor, a floor the branch's last layer added to, and a floor it
    never touched are all undecided, failed, waking at the retry time. A floor still fails
    on its own rules."""
    retry = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    policies = layered(
        central(
            FLOOR,
            "check: open\nreplaceable: true\nrequire:\n  - draft: false\n",
            "check: added\nrequire:\n  - draft: false\n",
        ),
        None,
        unreadable="reading `main`: GitLab answered 503",
        retry_at=retry,
        last_known=frozenset({"added"}),
        listed=["security-review", "open", "added", "repo-only"],
    )
    labels = ["security-approved"]
    for check in ("security-review", "open", "added", "repo-only"):
        verdict = verdict_of(policies, check, labels=labels)
        assert verdict.status == "failed", check
        assert verdict.wake_at == retry
        assert verdict.outcome is not None and verdict.outcome.unknown
        assert "waiting for the repository policies: reading `main`" in verdict.reason
    floor_fails = verdict_of(policies, labels=[])
    assert floor_fails.status == "failed" and "security-approved" in floor_fails.reason


def test_a_check_every_layer_leaves_out_is_not_applicable_and_one_layer_in_scope_decides() -> None:
    floor = central(
        "check: docs\napplies_to:\n  target_branches: [main]\nrequire:\n  - draft: false\n"
    )
    layer = compile_layer(
        SHA,
        repository(
            docs="""
            check: docs
            applies_to:
              target_branches: ["release/*"]
            require:
              - labels: {any: [docs]}
            """
        ),
    )
    policies = layered(floor, layer)
    outside = verdict_of(policies, "docs", target_branch="develop")
    assert (outside.status, outside.applicable) == ("passed", False)
    assert outside.reason == (
        "not applicable: central policies/p0.yml: target branch develop is not one of main; "
        f"repository {FOLDER}/docs.yml@{SHA[:12]}: target branch develop is not one of release/*"
    )
    release = verdict_of(policies, "docs", target_branch="release/1")
    assert (release.status, release.applicable) == ("failed", True)
    assert release.reason == f"labels: has none of docs [repository {FOLDER}/docs.yml@{SHA[:12]}]"

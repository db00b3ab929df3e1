"""`labels`: all, any, none, combined; case-sensitive."""

from __future__ import annotations

from tests.builders import judge


def test_labels_all() -> None:
    rule = "labels: {all: [backend, reviewed]}"
    held = judge(rule, labels=["reviewed", "backend", "x"])
    assert held.passed
    assert held.evidence == "labels: has labels backend, reviewed"
    failed = judge(rule, labels=["backend"])
    assert not failed.passed
    assert failed.evidence == "labels: missing label reviewed"
    assert failed.fix == "add label reviewed"


def test_labels_any() -> None:
    rule = "labels: {any: [hotfix, urgent]}"
    assert judge(rule, labels=["urgent"]).evidence == "labels: has label urgent"
    failed = judge(rule, labels=["bug"])
    assert failed.evidence == "labels: has none of hotfix, urgent"
    assert failed.fix == "add one of labels hotfix, urgent"


def test_labels_none() -> None:
    rule = "labels: {none: [do-not-merge, blocked]}"
    assert judge(rule, labels=["bug"]).evidence == "labels: has none of do-not-merge, blocked"
    failed = judge(rule, labels=["blocked"])
    assert not failed.passed
    assert failed.evidence == "labels: has label blocked, which must not be set"
    assert failed.fix == "remove label blocked"


def test_labels_combined_keys_must_all_hold() -> None:
    rule = "labels: {all: [backend], none: [wip]}"
    assert judge(rule, labels=["backend"]).passed
    failed = judge(rule, labels=["backend", "wip"])
    assert not failed.passed
    assert failed.evidence == "labels: has label wip, which must not be set"


def test_labels_are_case_sensitive_and_a_single_string_is_accepted() -> None:
    assert not judge("labels: {any: hotfix}", labels=["Hotfix"]).passed
    assert judge("labels: {any: hotfix}", labels=["hotfix"]).passed

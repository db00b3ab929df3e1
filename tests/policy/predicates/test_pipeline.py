"""`pipeline`: the status of the pipeline built for the head."""

from __future__ import annotations

import pytest

from tests.builders import judge


def test_pipeline_success() -> None:
    outcome = judge("pipeline: success", pipeline="success")
    assert outcome.passed
    assert outcome.evidence == "pipeline: the pipeline is success"


def test_pipeline_missing_is_waiting() -> None:
    outcome = judge("pipeline: success", pipeline=None, sha="abcdef0123456789" * 2 + "abcdefgh")
    assert not outcome.passed
    assert outcome.evidence == "pipeline: waiting for a pipeline for abcdef01"


@pytest.mark.parametrize("status", ["running", "pending", "created"])
def test_pipeline_in_progress_is_waiting(status: str) -> None:
    outcome = judge("pipeline: success", pipeline=status)
    assert not outcome.passed
    assert outcome.evidence == f"pipeline: waiting for pipeline ({status})"
    assert outcome.fix == "wait for the pipeline to finish (needs success)"


def test_pipeline_failed_and_lists() -> None:
    failed = judge("pipeline: success", pipeline="failed")
    assert failed.evidence == "pipeline: the pipeline is failed, not success"
    assert judge("pipeline: [success, skipped]", pipeline="skipped").passed
    manual = judge("pipeline: [success, skipped]", pipeline="manual")
    assert manual.evidence == "pipeline: the pipeline is manual, not success or skipped"

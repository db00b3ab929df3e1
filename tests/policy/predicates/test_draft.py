"""`draft`."""

from __future__ import annotations

from tests.builders import judge


def test_draft() -> None:
    not_draft = judge("draft: false", draft=False)
    assert not_draft.passed
    assert not_draft.evidence == "draft: the MR is not a draft"
    draft = judge("draft: false", draft=True)
    assert not draft.passed
    assert draft.evidence == "draft: the MR is a draft"
    assert draft.fix == "mark the MR as ready"
    assert judge("draft: true", draft=True).passed

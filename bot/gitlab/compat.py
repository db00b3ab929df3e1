"""Every GitLab version quirk the bot knows, in one place (GitLab 14.0 through 18.x).

Other code never compares versions: it asks a function here (`reports_failures(version)`), and
reads payload fields that changed name through the fallbacks here. Each threshold names the
GitLab source or docs it comes from (see docs/architecture.md, "GitLab facts").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version | None:
        match = _VERSION_RE.match(text or "")
        return cls(int(match[1]), int(match[2])) if match else None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


# When /version cannot be read a current GitLab is assumed: everything relied on since 15.7.
ASSUMED_VERSION = Version(18, 0)

# `status_check_responses` takes `status` (passed/failed); before, any response meant approved
# and the list showed approved/pending (ee/lib/api/status_checks.rb; 14.9-14.10 behind a flag).
REPORTS_FAILURES_SINCE = Version(15, 0)
# Project setting only_allow_merge_if_all_status_checks_passed ("Status checks must succeed").
REQUIRE_SETTING_SINCE = Version(15, 5)
# `detailed_merge_status` on the MR (lib/api/entities/merge_request_basic.rb).
DETAILED_MERGE_STATUS_SINCE = Version(15, 6)
# GET .../merge_requests/:iid/diffs (lib/api/merge_requests.rb); `/changes` before (deprecated).
DIFFS_ENDPOINT_SINCE = Version(15, 7)
# External status checks sign requests with a shared secret (X-Gitlab-Signature).
SIGNED_STATUS_CHECKS_SINCE = Version(17, 3)


def reports_failures(version: Version) -> bool:
    """Whether GitLab can show a failed check (14.x reads any response as an approval)."""
    return version >= REPORTS_FAILURES_SINCE


def has_require_setting(version: Version) -> bool:
    return version >= REQUIRE_SETTING_SINCE


def has_diffs_endpoint(version: Version) -> bool:
    return version >= DIFFS_ENDPOINT_SINCE


def signs_status_checks(version: Version) -> bool:
    return version >= SIGNED_STATUS_CHECKS_SINCE


def failures_shown_by(
    statuses: Iterable[str | None], mr: Mapping[str, Any] | None
) -> tuple[bool, str] | None:
    """What GitLab's answers reveal about reporting failures when its version is unknown:
    (can show failures, the evidence), or None when they do not tell.

    - a listed `approved`: only 14.0-14.8 say that (ee/lib/api/entities/merge_requests/
      status_check.rb then showed approved/pending);
    - a listed `passed` or `failed`: only a GitLab that takes `status` shows them;
    - the MR has `detailed_merge_status`: exposed from 15.6 (14.x has only `merge_status`).
    """
    shown = set(statuses)
    if "approved" in shown:
        return False, "a status check listed as approved"
    if shown & {"passed", "failed"}:
        return True, "a status check listed as passed or failed"
    if mr is not None and "detailed_merge_status" in mr:
        return True, "the merge request shows detailed_merge_status"
    return None


# -- payload shapes that changed over the versions -------------------------------------------


def draft_of(mr: Mapping[str, Any]) -> bool:
    """`draft` (15.0+ in the API, 16.3+ in webhooks); `work_in_progress` before."""
    draft = mr.get("draft")
    if draft is None:
        draft = mr.get("work_in_progress", False)
    return bool(draft)


def head_pipeline_of(mr: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The MR's `head_pipeline` (the full entity), or its older basic `pipeline`."""
    pipeline = mr.get("head_pipeline") or mr.get("pipeline")
    return pipeline if isinstance(pipeline, Mapping) else None


def project_path_of(mr: Mapping[str, Any], fallback: str | None) -> str:
    """The project's full path: `references.full` (12.6+), else from `web_url`."""
    references = mr.get("references")
    if isinstance(references, Mapping) and isinstance(references.get("full"), str):
        return str(references["full"]).rsplit("!", 1)[0]
    web_url = mr.get("web_url")
    if isinstance(web_url, str) and "/-/merge_requests/" in web_url:
        return web_url.split("/-/merge_requests/")[0].split("://", 1)[-1].split("/", 1)[-1]
    return fallback or str(mr.get("project_id", ""))

"""GitLab deliveries for tests, built from the real sample payloads in tests/samples/."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from functools import cache
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "samples"


@cache
def _sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of one of GitLab's documented payloads."""
    return copy.deepcopy(_sample(name))


def _point_at(
    payload: dict[str, Any],
    *,
    project_id: int,
    project_path: str,
    iid: int,
    sha: str,
    target_branch: str,
    source_branch: str,
) -> dict[str, Any]:
    payload["project"]["id"] = project_id
    payload["project"]["path_with_namespace"] = project_path
    attributes = payload["object_attributes"]
    attributes.update(
        iid=iid,
        target_project_id=project_id,
        source_project_id=project_id,
        target_branch=target_branch,
        source_branch=source_branch,
    )
    attributes.setdefault("last_commit", {})["id"] = sha
    return payload


def merge_request_hook(
    *,
    project_id: int = 1,
    project_path: str = "acme/app",
    iid: int = 1,
    sha: str = "a" * 40,
    action: str | None = "update",
    target_branch: str = "main",
    source_branch: str = "feature",
    sample_name: str = "merge-request-hook-open-18.9.json",
) -> dict[str, Any]:
    """A Merge Request Hook (X-Gitlab-Event: Merge Request Hook) for the given MR."""
    payload = _point_at(
        sample(sample_name),
        project_id=project_id,
        project_path=project_path,
        iid=iid,
        sha=sha,
        target_branch=target_branch,
        source_branch=source_branch,
    )
    if action is None:
        payload["object_attributes"].pop("action", None)
    else:
        payload["object_attributes"]["action"] = action
    return payload


def status_check_request(
    *, check_id: int = 1, check_name: str = "QA", action: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """What GitLab POSTs to a status check's URL (here without `action`, as on a retry)."""
    payload = merge_request_hook(
        sample_name="status-check-request-18.9.json", action=action, **kwargs
    )
    payload["external_approval_rule"] = {
        "id": check_id,
        "name": check_name,
        "external_url": "http://bot.example/webhook",
    }
    return payload


def system_hook(**kwargs: Any) -> dict[str, Any]:
    return merge_request_hook(sample_name="system-hook-merge-request-18.9.json", **kwargs)


def pipeline_hook(
    *,
    project_id: int = 1,
    project_path: str = "acme/app",
    iid: int | None = 1,
    sha: str = "a" * 40,
    status: str = "success",
    ref: str = "feature",
) -> dict[str, Any]:
    """A Pipeline Hook; with `iid` it is a merge request pipeline, without a branch pipeline."""
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": 31,
            "iid": 3,
            "ref": ref,
            "tag": False,
            "sha": sha,
            "source": "merge_request_event" if iid else "push",
            "status": status,
            "detailed_status": status,
            "stages": ["test"],
            "created_at": "2026-01-16 05:56:22 UTC",
            "finished_at": None,
            "duration": None,
        },
        "merge_request": (
            {
                "id": 93,
                "iid": iid,
                "title": "Add input validation",
                "source_branch": ref,
                "source_project_id": project_id,
                "target_branch": "main",
                "target_project_id": project_id,
                "state": "opened",
                "merge_status": "can_be_merged",
                "detailed_merge_status": "mergeable",
                "url": f"http://gitlab.example.com/{project_path}/-/merge_requests/{iid}",
            }
            if iid
            else None
        ),
        "user": {"id": 1, "name": "Alex Garcia", "username": "agarcia"},
        "project": {"id": project_id, "path_with_namespace": project_path, "name": "app"},
        "commit": {"id": sha, "message": "Add validation", "title": "Add validation"},
        "builds": [],
    }


def note_hook(
    *,
    project_id: int = 1,
    project_path: str = "acme/app",
    iid: int = 1,
    note: str = "/recheck",
    noteable_type: str = "MergeRequest",
) -> dict[str, Any]:
    """A Note Hook for a comment on a merge request."""
    return {
        "object_kind": "note",
        "event_type": "note",
        "user": {"id": 7, "name": "Sam Reviewer", "username": "sam"},
        "project_id": project_id,
        "project": {"id": project_id, "path_with_namespace": project_path, "name": "app"},
        "object_attributes": {
            "id": 1244,
            "note": note,
            "noteable_type": noteable_type,
            "author_id": 7,
            "project_id": project_id,
            "noteable_id": 93,
            "system": False,
            "url": f"http://gitlab.example.com/{project_path}/-/merge_requests/{iid}#note_1244",
        },
        "merge_request": {
            "id": 93,
            "iid": iid,
            "target_project_id": project_id,
            "source_project_id": project_id,
            "target_branch": "main",
            "source_branch": "feature",
            "state": "opened",
            "title": "Add input validation",
        },
    }


def sign(secret: str, body: bytes) -> str:
    """X-Gitlab-Signature: lowercase hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

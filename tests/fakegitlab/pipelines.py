"""Pipelines: an MR's pipelines and the head pipeline GitLab picks (GET .../pipelines)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakegitlab.commits import _commit
from tests.fakegitlab.server import (
    JSON,
    MR_ROUTE,
    Ctx,
    Route,
    Server,
    iso,
    sha_for,
)
from tests.fakegitlab.state import MergeRequest


class Pipelines(Server):
    """An MR's pipelines and the head pipeline GitLab picks."""

    def _pipeline_routes(self) -> list[Route]:
        mr = MR_ROUTE
        return [
            Route("GET", f"{mr}/pipelines", self._get_pipelines),
        ]

    def set_pipeline(self, project_id: int, iid: int, status: str | None, **fields: Any) -> None:
        """Create or update a pipeline and let GitLab pick the head pipeline.

        `status` None removes the head pipeline (a test's shortcut for "no pipeline ever ran").
        Otherwise the pipeline for `sha` (default: the current head) is updated in place, or a new
        one is created (listed first in /pipelines). With `merged_results=True` it is a
        merged-results pipeline (ee/app/services/ee/merge_requests/create_pipeline_service.rb):
        it runs on `refs/merge-requests/:iid/merge`, its `sha` is a merge commit of the target
        branch and `sha` (parent_ids [target, source]), and it remembers `source_sha` — which the
        API never shows (lib/api/entities/ci/pipeline_basic.rb exposes id, iid, project_id, sha,
        ref, status, source, created_at, updated_at, web_url). `merge_train=True` likewise on
        `refs/merge-requests/:iid/train`. Then `update_head_pipeline` runs."""
        project = self.projects[project_id]
        mr = project.mrs[iid]
        if status is None:
            mr.head_pipeline_id = None
            self._touch(project, mr)
            return
        source_sha = fields.get("sha", mr.data["sha"])
        kind = (
            "train"
            if fields.get("merge_train")
            else "merge"
            if fields.get("merged_results")
            else ""
        )
        now = iso(self.wall())
        pipeline = next(
            (
                p
                for p in mr.pipelines
                if p["_source_sha"] == source_sha and p["_kind"] == kind and "id" not in fields
            ),
            None,
        )
        if pipeline is None:
            pid = self._next_id(fields.get("id"))
            path = project.data["path_with_namespace"]
            sha, target_sha = source_sha, None
            ref = fields.get("ref", f"refs/merge-requests/{iid}/head")
            if kind:
                target_sha = sha_for(f"target/{project_id}/{mr.data['target_branch']}/{pid}")
                sha = sha_for(f"merge/{source_sha}/{target_sha}")
                ref = f"refs/merge-requests/{iid}/{kind}"
                project.commits[sha] = _commit(
                    {
                        "id": sha,
                        "message": f"Merge branch '{mr.data['source_branch']}' into "
                        f"'{mr.data['target_branch']}'",
                        "parent_ids": [target_sha, source_sha],
                    },
                    self.url,
                    project,
                )
            pipeline = {
                "id": pid,
                "iid": len(mr.pipelines) + 1,
                "project_id": project_id,
                "sha": sha,
                "ref": ref,
                "status": status,
                "source": fields.get("source", "merge_request_event"),
                "created_at": now,
                "updated_at": now,
                "web_url": f"{self.url}/{path}/-/pipelines/{pid}",
                "_source_sha": source_sha,
                "_target_sha": target_sha,
                "_kind": kind,
            }
            mr.pipelines.insert(0, pipeline)
        pipeline.update(status=status, updated_at=now)
        self._update_head_pipeline(mr)
        self._touch(project, mr)

    def _update_head_pipeline(self, mr: MergeRequest) -> None:
        """app/models/merge_request.rb `update_head_pipeline`: the newest pipeline whose `sha` or
        `source_sha` is the head (`for_sha_or_source_sha(diff_head_sha)`, merge-request
        pipelines first: Ci::PipelinesForMergeRequestFinder), and only if there is one: a push
        leaves the old pipeline in place until a pipeline for the new head exists."""
        head = mr.data["sha"]
        matching = [p for p in mr.pipelines if head in (p["sha"], p["_source_sha"])]
        if matching:
            matching.sort(key=lambda p: (p["source"] != "merge_request_event", -p["id"]))
            mr.head_pipeline_id = matching[0]["id"]

    def _head_pipeline(self, mr: MergeRequest) -> JSON | None:
        return next((p for p in mr.pipelines if p["id"] == mr.head_pipeline_id), None)

    def _get_pipelines(self, ctx: Ctx) -> web.Response:
        """GET .../pipelines: the MR's pipelines, newest first, paginated."""
        _, mr = self._mr(ctx)
        return self._paginate(ctx, [_pipeline_basic(p) for p in mr.pipelines])


def _pipeline_full(pipeline: Mapping[str, Any]) -> JSON:
    """API::Entities::Ci::Pipeline (the MR's `head_pipeline`): the basic fields and a few more;
    never `source_sha`/`target_sha`, which GitLab keeps to itself."""
    return {
        **_pipeline_basic(pipeline),
        "before_sha": pipeline["sha"],
        "tag": False,
        "yaml_errors": None,
        "user": None,
        "started_at": pipeline["created_at"],
        "finished_at": None,
        "committed_at": None,
        "duration": None,
        "queued_duration": None,
        "coverage": None,
        "detailed_status": {"text": pipeline["status"], "group": pipeline["status"]},
    }


def _pipeline_basic(pipeline: Mapping[str, Any]) -> JSON:
    return {
        k: pipeline[k]
        for k in (
            "id",
            "iid",
            "project_id",
            "sha",
            "ref",
            "status",
            "source",
            "created_at",
            "updated_at",
            "web_url",
        )
    }

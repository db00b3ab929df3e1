"""FakeGitLab: the server and every API area, composed."""

from __future__ import annotations

from tests.fakegitlab.approvals import Approvals
from tests.fakegitlab.commits import Commits
from tests.fakegitlab.diffs import Diffs
from tests.fakegitlab.graphql import GraphQL
from tests.fakegitlab.groups import Groups
from tests.fakegitlab.hooks import Hooks
from tests.fakegitlab.merge_requests import MergeRequests
from tests.fakegitlab.notes import Notes
from tests.fakegitlab.pipelines import Pipelines
from tests.fakegitlab.projects import Projects
from tests.fakegitlab.repository import Repository
from tests.fakegitlab.server import Route, Server
from tests.fakegitlab.status_checks import StatusChecks
from tests.fakegitlab.users import Users


class FakeGitLab(
    Users,
    Projects,
    MergeRequests,
    Diffs,
    Commits,
    Repository,
    Approvals,
    Pipelines,
    Notes,
    StatusChecks,
    Hooks,
    Groups,
    GraphQL,
    Server,
):
    """An in-memory GitLab behind a real HTTP server. See the package docstring."""

    def _build_routes(self) -> list[Route]:
        return [
            *super()._build_routes(),
            *self._user_routes(),
            *self._project_routes(),
            *self._merge_request_routes(),
            *self._diff_routes(),
            *self._commit_routes(),
            *self._repository_routes(),
            *self._approval_routes(),
            *self._pipeline_routes(),
            *self._note_routes(),
            *self._status_check_routes(),
            *self._hook_routes(),
            *self._group_routes(),
        ]

"""A fake GitLab: a real aiohttp server speaking the REST API v4 endpoints the bot uses.

It keeps projects, merge requests, status checks, groups, hooks and notes in memory, answers with
GitLab's status codes, bodies, pagination headers and version-dependent behaviour, lets a test
inject faults (latency, 5xx, 429 + Retry-After, dropped connections, rate-limit headers), lets a
test act while a request is in flight, and records every call so a test can assert exactly what
the bot sent.

    fake = FakeGitLab(version="18.9.0")
    await fake.start()                      # http://127.0.0.1:PORT (API under /api/v4)
    fake.add_project(1, "acme/app")
    check = fake.add_status_check(1, "security-review")
    fake.add_mr(1, 42, title="feat: x", labels=["backend"])
    ...                                     # run the bot against fake.url with fake.token
    assert fake.check_status(1, 42, "security-review") == "passed"
    assert [c.json["status"] for c in fake.status_posts()] == ["passed"]
    await fake.close()

Standalone, for benchmarks (prints its URL on the first line of stdout):

    python -m tests.fakegitlab --port 0 --latency 0.02 --version 18.9.0 --seed-mrs 200 --checks a,b

and for the README's "Try it in a minute" (acme/app with three MRs for the shipped policies:
!1 passes every check, !2 fails several, !3 waits for its pipeline; see standalone.seed_demo):

    python -m tests.fakegitlab --demo --port 8929 --bot-url http://127.0.0.1:8080/webhook

The GitLab behaviour mimicked here is paraphrased from GitLab's source and docs, 14.0 to 18.x (see
docs/architecture.md#gitlab-facts). Where real GitLab varies in ways the fake cannot know (a
feature flag, an instance setting), the fake picks the strictest plausible behaviour and says
so in a docstring.

The package: server.py holds the call record, faults, watchers, pagination, routing and HTTP
plumbing; each API area is a module with its builder methods and route handlers (a mixin over
server.Server): users, projects, merge_requests, diffs, commits, approvals, pipelines, notes,
status_checks, hooks, groups, graphql; state.py holds the records kept in memory; fake.py
composes FakeGitLab; standalone.py is `python -m tests.fakegitlab`.
"""

from tests.fakegitlab.approvals import APPROVAL_RESET_DELAY
from tests.fakegitlab.diffs import (
    MAX_DIFF_FILES,
    MAX_DIFF_LINES,
    MAX_DIFFS_PER_PAGE,
    MAX_PATCH_BYTES,
    SAFE_LIMIT_FACTOR,
    SEEDED_MR_AGE,
    diff_file,
    synth_diff,
)
from tests.fakegitlab.fake import FakeGitLab
from tests.fakegitlab.server import (
    API_PREFIX,
    COUNT_LIMIT,
    DEFAULT_PER_PAGE,
    GRAPHQL_PATH,
    JSON,
    MAX_PER_PAGE,
    UNKNOWN_ROUTE,
    ApiError,
    Call,
    Callback,
    Ctx,
    Fault,
    Handler,
    Params,
    Route,
    Watcher,
    iso,
    not_found,
    record_not_found,
    sha_for,
)
from tests.fakegitlab.standalone import main, seed, seed_demo
from tests.fakegitlab.state import Group, MergeRequest, Project, StatusResponse

__all__ = [
    "API_PREFIX",
    "APPROVAL_RESET_DELAY",
    "COUNT_LIMIT",
    "DEFAULT_PER_PAGE",
    "GRAPHQL_PATH",
    "JSON",
    "MAX_DIFFS_PER_PAGE",
    "MAX_DIFF_FILES",
    "MAX_DIFF_LINES",
    "MAX_PATCH_BYTES",
    "MAX_PER_PAGE",
    "SAFE_LIMIT_FACTOR",
    "SEEDED_MR_AGE",
    "UNKNOWN_ROUTE",
    "ApiError",
    "Call",
    "Callback",
    "Ctx",
    "FakeGitLab",
    "Fault",
    "Group",
    "Handler",
    "MergeRequest",
    "Params",
    "Project",
    "Route",
    "StatusResponse",
    "Watcher",
    "diff_file",
    "iso",
    "main",
    "not_found",
    "record_not_found",
    "seed",
    "seed_demo",
    "sha_for",
    "synth_diff",
]

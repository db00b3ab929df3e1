"""`python -m bot register` against the fake GitLab: creates, then changes nothing; plans on
--dry-run; covers a group's subgroups; reports per-project errors and carries on."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.cli.register import (
    Options,
    RegisterError,
    advice,
    branch_scope,
    check_url,
    run_register,
)
from bot.config import Settings
from bot.gitlab.client import GitLabError
from bot.policy import load_policy_text
from tests import payloads
from tests.conftest import TOKEN, WEBHOOK_SECRET, Bot, write_policies
from tests.fakegitlab import Call, FakeGitLab

URL = "https://bot.example.com/webhook"
CHECKS = ("conventional-title", "pipeline-green")  # conftest's DEFAULT_POLICIES
STATUS_SECRET = "status-check-secret-0123"
WRITES = ("POST", "PUT", "DELETE")


def writes(gitlab: FakeGitLab) -> list[Call]:
    return [c for c in gitlab.calls if c.method in WRITES]


async def run(
    settings: Settings, target: str = "acme/app", url: str = URL, **options: Any
) -> tuple[int, str]:
    out = io.StringIO()
    opts = Options(
        url=url,
        webhook_secret=settings.webhook_secret,
        status_check_secret=settings.status_check_secret,
        **options,
    )
    code = await run_register(settings, target, opts, out=out)
    text = out.getvalue()
    for secret in (TOKEN, WEBHOOK_SECRET, STATUS_SECRET):
        assert secret not in text
    return code, text


def checks_of(gitlab: FakeGitLab, project_id: int) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in gitlab.projects[project_id].checks.values()}


def hooks_of(gitlab: FakeGitLab, project_id: int) -> list[dict[str, Any]]:
    return list(gitlab.projects[project_id].hooks.values())


async def test_first_run_creates_second_run_changes_nothing(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_project(1, "acme/app")
    code, text = await run(make_settings())
    assert code == 0, text
    checks = checks_of(gitlab, 1)
    assert set(checks) == set(CHECKS)
    for name, check in checks.items():
        # GitLab wants a distinct external_url per check: the name rides in the query.
        assert check["external_url"] == f"{URL}?check={name}"
        assert check["protected_branch_ids"] == []
    [hook] = hooks_of(gitlab, 1)
    assert hook["url"] == URL
    assert hook["merge_requests_events"] and hook["pipeline_events"] and hook["note_events"]
    assert hook["confidential_note_events"] is True  # a /recheck in an internal note
    assert hook["push_events"] is True  # a target branch's repository policies may change
    assert hook["enable_ssl_verification"] is True
    assert hook["token"] == WEBHOOK_SECRET
    assert "acme/app: 3 changes" in text
    assert "created   status check conventional-title" in text
    assert '"Status checks must succeed": off' in text

    gitlab.reset_calls()
    code, text = await run(make_settings())
    assert code == 0, text
    assert writes(gitlab) == []
    assert "acme/app: up to date" in text
    assert "1 project: 0 changed, 1 up to date" in text


async def test_changed_url_and_policies_update_in_place(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings], policy_dir: Path
) -> None:
    gitlab.add_project(1, "acme/app")
    main = gitlab.add_protected_branch(1, "main")
    await run(make_settings())
    ids_before = {name: c["id"] for name, c in checks_of(gitlab, 1).items()}
    [hook_before] = hooks_of(gitlab, 1)

    # The bot moved, one policy was added (scoped to main), one removed.
    write_policies(
        policy_dir,
        {
            "security.yml": "check: security-review\napplies_to: {target_branches: [main]}\n"
            "require:\n  - approvals: {count: 1}\n"
        },
    )
    (policy_dir / "pipeline.yml").unlink()
    new_url = "https://status-bot.example.com/webhook"
    gitlab.reset_calls()
    code, text = await run(make_settings(), url=new_url)
    assert code == 0, text
    checks = checks_of(gitlab, 1)
    assert checks["conventional-title"]["id"] == ids_before["conventional-title"]
    assert checks["conventional-title"]["external_url"] == f"{new_url}?check=conventional-title"
    assert checks["security-review"]["protected_branch_ids"] == [main["id"]]
    [hook] = hooks_of(gitlab, 1)
    assert hook["id"] == hook_before["id"] and hook["url"] == new_url
    assert [c.route for c in writes(gitlab)] == [
        "POST /projects/:id/external_status_checks",
        "PUT /projects/:id/external_status_checks/:check_id",
        "PUT /projects/:id/hooks/:hook_id",
    ]
    # The orphan (pipeline-green, still at the old URL) is reported, not silently deleted...
    assert "status check pipeline-green points at the bot but no policy decides it" in text
    # GitLab times out only the pending row it stores when an MR is created: after a push an
    # unanswered check stays pending for good (it does not turn failed on 16.6+).
    assert "stays pending" in text and "blocks merging" in text and "failed on 16.6" not in text
    assert "pipeline-green" in checks

    # ...until --prune; then everything is in place and a further run writes nothing.
    code, text = await run(make_settings(), url=new_url, prune=True)
    assert code == 0 and "deleted   status check pipeline-green" in text, text
    assert set(checks_of(gitlab, 1)) == {"conventional-title", "security-review"}
    gitlab.reset_calls()
    code, text = await run(make_settings(), url=new_url, prune=True)
    assert writes(gitlab) == [] and "acme/app: up to date" in text, text


async def test_group_with_subgroups_covers_every_project(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_group(10, "acme")
    gitlab.add_group(11, "sub", parent="acme")
    gitlab.add_group(12, "deeper", parent="acme/sub")
    gitlab.add_group(20, "other")
    gitlab.add_project(1, "acme/app")
    gitlab.add_project(2, "acme/sub/lib")
    gitlab.add_project(3, "acme/sub/deeper/tool")
    gitlab.add_project(4, "other/elsewhere")
    code, text = await run(make_settings(), target="acme")
    assert code == 0, text
    for project_id in (1, 2, 3):
        assert set(checks_of(gitlab, project_id)) == set(CHECKS)
        assert len(hooks_of(gitlab, project_id)) == 1
    assert checks_of(gitlab, 4) == {} and hooks_of(gitlab, 4) == []
    assert "3 projects: 3 changed, 0 up to date" in text
    assert text.index("acme/app:") < text.index("acme/sub/lib:") < text.index("acme/sub/deeper")


async def test_per_project_errors_are_reported_and_the_run_goes_on(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_group(10, "acme")
    gitlab.add_project(1, "acme/app")
    gitlab.add_project(2, "acme/premium")  # no Ultimate licence: status check API answers 401
    gitlab.unlicensed_projects.add(2)
    developer = {"project_access": {"access_level": 30}, "group_access": None}
    gitlab.add_project(3, "acme/dev-only", permissions=developer)  # hooks answer 403
    gitlab.add_project(4, "acme/last")
    code, text = await run(make_settings(), target="acme")
    assert code == 1
    assert "acme/premium: FAILED: GitLab answered 401" in text
    assert "no Ultimate licence" in text
    assert "acme/dev-only: FAILED: GitLab answered 403" in text
    assert "needs the Maintainer role on acme/dev-only" in text
    for project_id in (1, 4):
        assert set(checks_of(gitlab, project_id)) == set(CHECKS)
        assert len(hooks_of(gitlab, project_id)) == 1
    assert checks_of(gitlab, 2) == {} and hooks_of(gitlab, 2) == []
    assert "4 projects: 2 changed, 0 up to date, 2 failed" in text


async def test_dry_run_writes_nothing_and_prints_the_plan(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "pipeline-green", external_url="http://old-host/webhook")
    gitlab.add_hook(1, URL, push_events=False, merge_requests_events=True)
    code, text = await run(make_settings(), dry_run=True, require=True)
    assert code == 0, text
    assert writes(gitlab) == []
    assert "acme/app: 4 changes planned (dry run)" in text
    assert f"create    status check conventional-title ({URL}?check=conventional-title" in text
    assert "update    status check pipeline-green (URL http://old-host/webhook" in text
    assert "update    webhook" in text and "push_events → true" in text
    assert 'update    "Status checks must succeed" (off → on)' in text
    assert "dry run: nothing was written" in text

    code, text = await run(make_settings(), require=True)
    assert code == 0 and len(writes(gitlab)) == 4, text
    gitlab.reset_calls()
    code, text = await run(make_settings(), dry_run=True, require=True)
    assert writes(gitlab) == [] and "acme/app: up to date" in text, text


async def test_a_hook_without_internal_notes_is_updated_and_then_delivers_them(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    """A webhook set up before (merge request, pipeline and comment events, but not internal
    comments) is a change: GitLab sends an internal note's /recheck only to hooks with
    confidential_note_events."""
    gitlab.add_project(1, "acme/app")
    gitlab.add_mr(1, 1)
    gitlab.add_hook(
        1,
        URL,
        push_events=False,
        merge_requests_events=True,
        pipeline_events=True,
        note_events=True,
        token=WEBHOOK_SECRET,
    )
    note = gitlab.add_note(1, 1, "/recheck", internal=True)
    assert gitlab.note_deliveries(1, 1, note) == []
    code, text = await run(make_settings(), dry_run=True)
    assert code == 0, text
    assert "update    webhook" in text and "confidential_note_events → true" in text
    code, text = await run(make_settings())
    assert code == 0, text
    [hook] = hooks_of(gitlab, 1)
    assert hook["confidential_note_events"] is True
    [delivery] = gitlab.note_deliveries(1, 1, note)
    assert delivery["headers"]["X-Gitlab-Event"] == "Confidential Note Hook"
    gitlab.reset_calls()
    code, text = await run(make_settings())
    assert writes(gitlab) == [] and "acme/app: up to date" in text, text


async def test_require_turns_on_status_checks_must_succeed(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_project(1, "acme/app")
    await run(make_settings())
    assert gitlab.projects[1].data["only_allow_merge_if_all_status_checks_passed"] is False
    gitlab.reset_calls()
    code, text = await run(make_settings(), require=True)
    assert code == 0, text
    [put] = writes(gitlab)
    assert put.route == "PUT /projects/:id"
    assert put.json == {"only_allow_merge_if_all_status_checks_passed": True}
    assert gitlab.projects[1].data["only_allow_merge_if_all_status_checks_passed"] is True
    assert '"Status checks must succeed": on' in text
    gitlab.reset_calls()
    code, text = await run(make_settings(), require=True)
    assert writes(gitlab) == []
    assert 'acme/app: up to date; "Status checks must succeed": on' in text


@pytest.mark.parametrize(("version", "signed"), [("17.3.0", True), ("17.2.5", False)])
async def test_shared_secret_is_sent_only_from_17_3(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings], version: str, signed: bool
) -> None:
    gitlab.version = version
    gitlab.add_project(1, "acme/app")
    settings = make_settings(status_check_secret=STATUS_SECRET)
    code, text = await run(settings)
    assert code == 0, text
    posts = [c for c in writes(gitlab) if c.route.endswith("external_status_checks")]
    assert len(posts) == 2
    assert all(("shared_secret" in c.json) is signed for c in posts)
    stored = {c["shared_secret"] for c in checks_of(gitlab, 1).values()}
    assert stored == ({STATUS_SECRET} if signed else {None})
    assert ("cannot sign status-check requests" in text) is (not signed)
    gitlab.reset_calls()
    code, text = await run(settings)  # 17.3+ shows `hmac: true`: nothing to re-send
    assert writes(gitlab) == [] and "up to date" in text, text


async def test_a_check_without_secret_gets_one_and_update_secrets_resends(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    gitlab.add_project(1, "acme/app")
    await run(make_settings())  # registered while STATUS_CHECK_SECRET was unset
    settings = make_settings(status_check_secret=STATUS_SECRET)
    gitlab.reset_calls()
    code, text = await run(settings)
    assert code == 0, text
    assert sorted(c.json.get("shared_secret", "") for c in writes(gitlab)) == [STATUS_SECRET] * 2
    gitlab.reset_calls()
    code, text = await run(settings, update_secrets=True)
    sent = writes(gitlab)
    assert [c.route for c in sent].count("PUT /projects/:id/hooks/:hook_id") == 1
    assert any(c.json.get("token") == WEBHOOK_SECRET for c in sent)
    assert "secret token re-sent" in text


@pytest.mark.parametrize("version", ["14.10.0", "15.4.0", "15.5.0"])
async def test_older_gitlab_versions(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings], version: str
) -> None:
    gitlab.version = version
    gitlab.add_project(1, "acme/app")
    code, text = await run(make_settings(), require=True)
    assert code == 0, text
    assert set(checks_of(gitlab, 1)) == set(CHECKS)
    assert len(hooks_of(gitlab, 1)) == 1
    has_setting = version == "15.5.0"
    project_puts = [c for c in gitlab.calls if c.route == "PUT /projects/:id"]
    assert len(project_puts) == (1 if has_setting else 0)
    if has_setting:
        assert gitlab.projects[1].data["only_allow_merge_if_all_status_checks_passed"] is True
    else:
        assert "does not exist before GitLab 15.5" in text
    gitlab.reset_calls()
    code, text = await run(make_settings(), require=True)
    assert writes(gitlab) == [] and "up to date" in text, text


async def test_unknown_target_and_bad_token_stop_the_run(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(RegisterError, match="no project or group 'acme/nope'"):
        await run(make_settings(), target="acme/nope")
    with pytest.raises(RegisterError, match="token is invalid or expired"):
        await run(make_settings(gitlab_token="wrong-token"))
    assert writes(gitlab) == []


def test_branch_scope_never_hides_a_check_from_an_mr_it_judges() -> None:
    protected = [{"id": 7, "name": "main"}, {"id": 8, "name": "release/*"}]

    def scope(branches: str) -> list[int]:
        policy = load_policy_text(
            f"check: c\napplies_to: {{target_branches: {branches}}}\nrequire: [{{draft: false}}]"
        )
        return branch_scope(policy, protected)[0]

    assert scope("[main]") == [7]
    # GitLab compares a check's protected branches by exact name: `release/*` would hide the
    # check from release/1.0, and an unprotected `dev` would hide it from dev: all branches.
    assert scope("[main, release/*]") == []
    assert scope("[main, dev]") == []
    assert check_url("https://b.example/webhook?x=1", "a b") == (
        "https://b.example/webhook?x=1&check=a%20b"
    )


def test_advice_names_the_role_or_the_licence() -> None:
    write = GitLabError(401, "Not allowed", path="/projects/1/external_status_checks")
    assert "Maintainer" in advice(write, "acme/app") and "Ultimate" in advice(write, "acme/app")
    assert "token is invalid" in advice(GitLabError(401, "x", path="/projects/1"), "acme/app")
    assert "Maintainer role on acme/app" in advice(GitLabError(403, "x"), "acme/app")


async def test_bot_accepts_a_status_check_request_at_the_registered_url(bot: Bot) -> None:
    body = payloads.status_check_request(check_name="conventional-title")
    url = check_url(f"{bot.url}/webhook", "conventional-title")
    async with bot.session.post(url, json=body) as resp:
        assert resp.status == 202, await resp.text()


async def test_command_line_exit_code_and_report(gitlab: FakeGitLab, policy_dir: Path) -> None:
    gitlab.add_group(10, "acme")
    gitlab.add_project(1, "acme/app")
    gitlab.add_project(2, "acme/premium")
    gitlab.unlicensed_projects.add(2)
    env = {
        **os.environ,
        "GITLAB_URL": gitlab.url,
        "GITLAB_TOKEN": TOKEN,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "POLICY_DIR": str(policy_dir),
        "LOG_FORMAT": "json",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "register",
        "acme",
        "--url",
        URL,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    text = stdout.decode()
    assert process.returncode == 1, (text, stderr.decode())
    assert "acme/app: 3 changes" in text
    assert "acme/premium: FAILED" in text
    assert WEBHOOK_SECRET not in text + stderr.decode()
    assert TOKEN not in text + stderr.decode()


async def test_a_check_only_a_repository_defines_is_registered_with_check(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings]
) -> None:
    """`--check NAME` registers a status check no central policy names (one the project's
    .gitlab/status-checks/ defines, or status-check-policies); it is not pruned either."""
    gitlab.add_project(1, "acme/app")
    options = {"extra_checks": ("reviewed", "status-check-policies")}
    code, text = await run(make_settings(), **options)
    assert code == 0, text
    assert set(checks_of(gitlab, 1)) == {*CHECKS, "reviewed", "status-check-policies"}
    assert checks_of(gitlab, 1)["reviewed"]["external_url"] == f"{URL}?check=reviewed"
    gitlab.reset_calls()
    code, text = await run(make_settings(), prune=True, **options)
    assert code == 0 and writes(gitlab) == [], text

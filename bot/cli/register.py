"""`python -m bot register PROJECT_OR_GROUP --url URL`: wire projects to the bot, idempotently.

Per project it makes GitLab match what the policies say: one external status check per policy
(named as the policy's `check`), one webhook carrying merge request, pipeline and comment events
(internal comments included), and optionally "Status checks must succeed". It reads first, plans,
and writes only what differs, so a second run writes nothing; `--dry-run` prints the plan and
writes nothing at all.

Two GitLab facts shape the plan (read in GitLab's source: docs/architecture.md#gitlab-facts):
- `external_url` is unique per project, so each check gets the bot's URL plus `?check=<name>`
  (the bot routes on the path and judges by the check's name in the body; the query is a label).
- GitLab lists a check on an MR only when it has no protected branch or one whose name *equals*
  the MR's target branch (an exact comparison, wildcards included). Scoping a check to some
  branches would hide it from an MR the policy still judges, so a check is scoped only when every
  `applies_to.target_branches` entry is a plain branch name that is protected; otherwise it
  applies to every branch and the bot answers "passed (not applicable)" where the policy does not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from bot.cli.base import settings_from_env
from bot.config import Settings
from bot.gitlab import compat
from bot.gitlab.compat import Version
from bot.policy.model import Policy, PolicyLoadError
from bot.policy.predicates.scope import Projects, TargetBranches
from bot.service.policy_store import PolicyStore
from bot.terminal import TerminalStream

if TYPE_CHECKING:
    from bot.gitlab.client import GitLab, GitLabError

# The GitLab client (aiohttp, gidgetlab) is imported where it is used: `python -m bot` builds
# every command's parser, and `validate` or `test` should not pay for loading it.

REQUIRE_SETTING = "only_allow_merge_if_all_status_checks_passed"
REQUIRE_LABEL = '"Status checks must succeed"'
HOOK_EVENTS = {
    "merge_requests_events": True,
    "pipeline_events": True,
    "note_events": True,
    # Internal notes fire "Confidential Note Hook", only to hooks with this flag: without it a
    # /recheck in an internal note never reaches the bot.
    "confidential_note_events": True,
    # A push to a target branch may change the policies kept in the repository
    # (docs/architecture.md#repository-policies): the bot drops what it read of that branch.
    "push_events": True,
}
PROJECTS_AT_ONCE = 4
_GLOB_CHARS = frozenset("*?[")

Action = Literal["create", "update", "delete", "unchanged"]
_PAST = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "unchanged"}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "register",
        help="create or update the status checks and webhook of a project or group's projects",
    )
    parser.add_argument("target", metavar="PROJECT_OR_GROUP", help="path or id")
    parser.add_argument("--url", help="the bot's webhook URL (default: PUBLIC_URL + /webhook)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    parser.add_argument(
        "--require", action="store_true", help='turn on "Status checks must succeed"'
    )
    parser.add_argument(
        "--update-secrets",
        action="store_true",
        help="re-send WEBHOOK_SECRET and STATUS_CHECK_SECRET (GitLab never shows them back)",
    )
    parser.add_argument(
        "--prune", action="store_true", help="delete status checks at the bot with no policy"
    )
    parser.add_argument(
        "--group", action="store_true", help="PROJECT_OR_GROUP names a group (for a numeric id)"
    )
    parser.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="NAME",
        help="also a status check NAME with no central policy: one a repository's "
        ".gitlab/status-checks/ defines, or status-check-policies (repeatable)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return register(
        settings_from_env(),
        args.target,
        url=args.url,
        dry_run=args.dry_run,
        require=args.require,
        update_secrets=args.update_secrets,
        prune=args.prune,
        group=args.group,
        out=TerminalStream(sys.stdout),  # type: ignore[arg-type]
        extra_checks=args.check,
    )


class RegisterError(Exception):
    """The run cannot start (bad URL, no policies, unknown target, invalid token)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Item:
    """One thing on a project the plan looks at, and the call that would make it right."""

    what: str  # "status check security-review", "webhook https://...", REQUIRE_LABEL
    action: Action
    detail: str = ""
    method: str = ""
    path: str = ""
    data: dict[str, Any] | None = None
    done: bool = False

    def line(self, dry_run: bool) -> str:
        verb = self.action if dry_run or not self.done else _PAST[self.action]
        return f"  {verb:<9} {self.what}{f' ({self.detail})' if self.detail else ''}"


@dataclass
class ProjectReport:
    path: str
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    require_state: str = ""
    error: str | None = None

    @property
    def changes(self) -> list[Item]:
        return [item for item in self.items if item.action != "unchanged"]

    def render(self, dry_run: bool) -> str:
        if self.error is not None and not self.items:
            return f"{self.path}: FAILED: {self.error}"
        changes = self.changes
        if self.error is None and not changes:
            head = f"{self.path}: up to date"
            if self.require_state:
                head += f"; {self.require_state}"
            return "\n".join([head, *(f"  note: {n}" for n in self.notes)])
        count = f"{len(changes)} change{'s' if len(changes) != 1 else ''}"
        head = f"{self.path}: {count} planned (dry run)" if dry_run else f"{self.path}: {count}"
        lines = [head, *(item.line(dry_run) for item in self.items)]
        if self.require_state:
            lines.append(f"  {self.require_state}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.error is not None:
            done = sum(item.done for item in changes)
            lines.append(f"  FAILED after {done} of {len(changes)} changes: {self.error}")
        return "\n".join(lines)


# -- pure planning ----------------------------------------------------------------------------


def check_url(base: str, check: str) -> str:
    """The status check's URL: the bot's URL plus `check=<name>` (GitLab wants distinct URLs)."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "check"]
    query.append(("check", check))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def base_url(url: str) -> str:
    """A check's URL without its `check=` label: the URL of the bot it points at."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "check"]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def policy_applies_to_project(policy: Policy, path: str) -> bool:
    """False when the policy's `applies_to.projects` leaves this project out."""
    for rule in policy.applies_to:
        if isinstance(rule, Projects) and not rule.globs.matches(path):
            return False
    return True


def target_branch_patterns(policy: Policy) -> tuple[str, ...]:
    for rule in policy.applies_to:
        if isinstance(rule, TargetBranches):
            return rule.globs.globs
    return ()


def branch_scope(policy: Policy, protected: Sequence[dict[str, Any]]) -> tuple[list[int], str]:
    """The protected branch ids to scope the policy's check to, and a phrase saying why."""
    patterns = target_branch_patterns(policy)
    if not patterns:
        return [], "all branches"
    if any(_GLOB_CHARS & set(p) for p in patterns):
        wild = ", ".join(p for p in patterns if _GLOB_CHARS & set(p))
        return [], f"all branches: GitLab scopes checks by exact branch name, not {wild}"
    by_name = {str(b.get("name")): int(b["id"]) for b in protected if "id" in b}
    missing = [p for p in patterns if p not in by_name]
    if missing:
        return [], f"all branches: {', '.join(missing)} is not a protected branch"
    return sorted(by_name[p] for p in patterns), f"protected branches {', '.join(patterns)}"


def bot_urls(policies: Iterable[Policy], existing: Sequence[dict[str, Any]], url: str) -> set[str]:
    """The bot's URL now and before: the base URLs of the checks named after our policies."""
    names = {p.check for p in policies}
    found = {base_url(str(c.get("external_url", ""))) for c in existing if c.get("name") in names}
    return found | {url}


def _points_at_bot(check: dict[str, Any], bot: set[str]) -> bool:
    """At one of the bot's URLs, or labelled `check=<its name>` as only `register` does."""
    url = str(check.get("external_url", ""))
    label = dict(parse_qsl(urlsplit(url).query)).get("check")
    return base_url(url) in bot or label == check.get("name")


def _branch_ids(check: dict[str, Any]) -> list[int]:
    return sorted(int(b["id"]) for b in check.get("protected_branches") or [] if "id" in b)


def plan_checks(
    policies: Iterable[Policy],
    existing: Sequence[dict[str, Any]],
    protected: Sequence[dict[str, Any]],
    *,
    project_id: int,
    project_path: str,
    url: str,
    secret: str | None,
    version: Version,
    update_secrets: bool,
    prune: bool,
) -> tuple[list[Item], list[str]]:
    """Items for the status checks: create missing ones, update those that differ."""
    items: list[Item] = []
    notes: list[str] = []
    signs = secret is not None and compat.signs_status_checks(version)
    by_name = {str(c.get("name")): c for c in existing}
    wanted = list(policies)
    path = f"/projects/{project_id}/external_status_checks"
    ours = bot_urls(wanted, existing, url)
    for policy in wanted:
        if not policy_applies_to_project(policy, project_path):
            continue
        what = f"status check {policy.check}"
        branch_ids, scope = branch_scope(policy, protected)
        desired_url = check_url(url, policy.check)
        current = by_name.get(policy.check)
        if current is None:
            data: dict[str, Any] = {
                "name": policy.check,
                "external_url": desired_url,
                "protected_branch_ids": branch_ids,
            }
            if signs:
                data["shared_secret"] = secret
            detail = f"{desired_url}, {scope}" + (", signed" if signs else "")
            items.append(Item(what, "create", detail, "POST", path, data))
            continue
        changes: dict[str, Any] = {}
        why = []
        if current.get("external_url") != desired_url:
            changes["external_url"] = desired_url
            why.append(f"URL {current.get('external_url')} → {desired_url}")
        if _branch_ids(current) != branch_ids:
            changes["protected_branch_ids"] = branch_ids
            why.append(f"scope → {scope}")
        if signs and (update_secrets or current.get("hmac") is False):
            changes["shared_secret"] = secret
            why.append("shared secret (re)sent" if current.get("hmac") else "shared secret set")
        elif secret is None and current.get("hmac"):
            notes.append(
                f"GitLab signs {policy.check}'s requests but STATUS_CHECK_SECRET is unset: "
                "the bot does not verify the signature"
            )
        if changes:
            items.append(
                Item(what, "update", "; ".join(why), "PUT", f"{path}/{current['id']}", changes)
            )
        else:
            items.append(Item(what, "unchanged", scope))
    names = {p.check for p in wanted}
    for check in existing:
        name = str(check.get("name"))
        if name in names or not _points_at_bot(check, ours):
            continue
        if prune:
            items.append(
                Item(
                    f"status check {name}",
                    "delete",
                    "points at the bot, no policy decides it",
                    "DELETE",
                    f"{path}/{check['id']}",
                )
            )
        else:
            # GitLab times out (16.6+) only the pending rows it stores at MR creation, on Retry
            # or when posted; after a push nothing stores one, so the check stays pending.
            notes.append(
                f"status check {name} points at the bot but no policy decides it: it stays "
                "pending on every MR (after a push for good), which blocks merging where "
                f"{REQUIRE_LABEL} is on; --prune deletes it"
            )
    return items, notes


def plan_hook(
    hooks: Sequence[dict[str, Any]],
    *,
    project_id: int,
    url: str,
    token: str | None,
    old_urls: Iterable[str],
    update_secrets: bool,
) -> tuple[Item, list[str]]:
    """The item for the webhook: matched by URL (or by the bot's previous URL, then moved)."""
    desired: dict[str, Any] = dict(HOOK_EVENTS)
    if url.lower().startswith("https://"):
        desired["enable_ssl_verification"] = True
    path = f"/projects/{project_id}/hooks"
    what = f"webhook {url}"
    matching = [h for h in hooks if h.get("url") == url]
    notes = []
    if len(matching) > 1:
        notes.append(
            f"{len(matching)} webhooks point at {url}: GitLab delivers each event "
            f"{len(matching)} times (the bot coalesces them; delete the extra ones)"
        )
    current = matching[0] if matching else None
    moved_from = None
    if current is None:
        olds = set(old_urls) - {url}
        current = next((h for h in hooks if h.get("url") in olds), None)
        moved_from = current.get("url") if current is not None else None
    if current is None:
        data = {"url": url, **desired}
        if token is not None:
            data["token"] = token
        events = "merge request, pipeline and comment events (internal comments included)"
        detail = f"{events}; secret token {'set' if token is not None else 'NOT set'}"
        return Item(what, "create", detail, "POST", path, data), notes
    changes = {k: v for k, v in desired.items() if current.get(k) != v}
    why = [f"URL {moved_from} → {url}"] if moved_from else []
    why += [f"{k} → {str(v).lower()}" for k, v in changes.items()]
    if not changes and not moved_from and not (update_secrets and token is not None):
        return Item(what, "unchanged", "secret token not readable: --update-secrets re-sends it"), (
            notes
        )
    data = {"url": url, **changes}
    if token is not None:
        data["token"] = token  # GitLab never shows the token: re-send it with any update
        why.append("secret token re-sent")
    return Item(what, "update", "; ".join(why), "PUT", f"{path}/{current['id']}", data), notes


def plan_require(
    project: dict[str, Any], *, version: Version, require: bool
) -> tuple[Item | None, str]:
    """The "Status checks must succeed" item (only with --require) and a sentence on its state."""
    if not compat.has_require_setting(version):
        state = f"{REQUIRE_LABEL} does not exist before GitLab 15.5 (this is {version})"
        return None, state
    if REQUIRE_SETTING not in project:
        return None, f"{REQUIRE_LABEL} is not shown by GitLab (no Ultimate licence?)"
    if project[REQUIRE_SETTING]:
        return (Item(REQUIRE_LABEL, "unchanged", "on") if require else None), f"{REQUIRE_LABEL}: on"
    if not require:
        return None, (
            f"{REQUIRE_LABEL}: off, so a failed check does not block merging "
            "(--require turns it on)"
        )
    item = Item(
        REQUIRE_LABEL,
        "update",
        "off → on",
        "PUT",
        f"/projects/{project['id']}",
        {REQUIRE_SETTING: True},
    )
    return item, ""


# -- advice -----------------------------------------------------------------------------------


def advice(exc: GitLabError, project: str) -> str:
    """What a platform engineer should do about a failed call while registering `project`."""
    call = f" to {exc.path}" if exc.path else ""
    if exc.status == 401:
        if "external_status_checks" in exc.path:
            return (
                f"GitLab answered 401{call}: {project} has no Ultimate licence (external status "
                "checks need Ultimate), or the token's user lacks the Maintainer role there "
                "(GitLab answers 401 'Not allowed' to status-check changes without it)"
            )
        return f"GitLab answered 401{call}: the token is invalid or expired"
    if exc.status == 403:
        return (
            f"GitLab answered 403{call}: the token's user needs the Maintainer role on {project} "
            "to manage webhooks and settings (and the token the `api` scope)"
        )
    if exc.status == 404:
        return (
            f"GitLab answered 404{call}: {project} or the item does not exist, or the token's "
            "user cannot see it (add it as a Maintainer)"
        )
    if exc.status == 422:
        return f"GitLab refused the change{call}: {exc.message}"
    return f"{exc.advice()}{f' ({exc.path})' if exc.path else ''}"


# -- talking to GitLab ------------------------------------------------------------------------


@dataclass
class Options:
    url: str
    webhook_secret: str | None
    status_check_secret: str | None
    dry_run: bool = False
    require: bool = False
    update_secrets: bool = False
    prune: bool = False
    extra_checks: tuple[str, ...] = ()


async def _first_error(*calls: Any) -> list[Any]:
    """Run reads concurrently; raise the first failure in call order (a stable report)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _none() -> list[Any]:
    return []


async def register_project(
    gitlab: GitLab, project: dict[str, Any], policies: Sequence[Policy], options: Options
) -> ProjectReport:
    """Read, plan and (unless dry-run) apply, for one project; errors end up in the report."""
    from bot.gitlab.client import GitLabError, project_ref

    path = str(project.get("path_with_namespace") or project.get("id"))
    report = ProjectReport(path)
    project_id = int(project["id"])
    ref = project_ref(project_id)
    wanted = [p for p in policies if policy_applies_to_project(p, path)]
    skipped = [p.check for p in policies if p not in wanted]
    if skipped:
        report.notes.append(f"not registered here (applies_to.projects): {', '.join(skipped)}")
    needs_branches = any(target_branch_patterns(p) for p in wanted)
    try:
        existing, hooks, protected = await _first_error(
            gitlab.get_all(f"/projects/{ref}/external_status_checks"),
            gitlab.get_all(f"/projects/{ref}/hooks"),
            gitlab.get_all(f"/projects/{ref}/protected_branches") if needs_branches else _none(),
        )
        check_items, notes = plan_checks(
            policies,
            existing,
            protected,
            project_id=project_id,
            project_path=path,
            url=options.url,
            secret=options.status_check_secret,
            version=gitlab.version,
            update_secrets=options.update_secrets,
            prune=options.prune,
        )
        report.items += check_items
        report.notes += notes
        hook_item, notes = plan_hook(
            hooks,
            project_id=project_id,
            url=options.url,
            token=options.webhook_secret,
            old_urls=bot_urls(policies, existing, options.url),
            update_secrets=options.update_secrets,
        )
        report.items.append(hook_item)
        report.notes += notes
        require_item, report.require_state = plan_require(
            project, version=gitlab.version, require=options.require
        )
        if require_item is not None:
            report.items.append(require_item)
        if not options.dry_run:
            await _apply(gitlab, report)
    except GitLabError as exc:
        report.error = advice(exc, path)
    return report


async def _apply(gitlab: GitLab, report: ProjectReport) -> None:
    for item in report.items:
        if item.action == "unchanged":
            continue
        if item.method == "POST":
            await gitlab.post(item.path, item.data)
        elif item.method == "PUT":
            answer = await gitlab.put(item.path, item.data)
            if item.what == REQUIRE_LABEL and not (answer or {}).get(REQUIRE_SETTING):
                report.notes.append(
                    f"GitLab accepted the change but still shows {REQUIRE_LABEL} off"
                )
                item.done = True
                report.require_state = f"{REQUIRE_LABEL}: off"
                continue
        elif item.method == "DELETE":
            await gitlab.delete(item.path)
        item.done = True
        if item.what == REQUIRE_LABEL:
            report.require_state = f"{REQUIRE_LABEL}: on"


async def find_projects(gitlab: GitLab, target: str, *, group: bool) -> list[dict[str, Any]]:
    """The projects named by TARGET: a project (path or id), else every project of a group."""
    from bot.gitlab.client import GitLabError

    ref = target if target.isdigit() else quote(target.strip("/"), safe="")
    if not group:
        try:
            return [await gitlab.get(f"/projects/{ref}")]
        except GitLabError as exc:
            if exc.status != 404:
                raise
    try:
        await gitlab.get(f"/groups/{ref}")
    except GitLabError as exc:
        if exc.status == 404:
            what = "group" if group else "project or group"
            raise RegisterError(
                f"no {what} {target!r} on GitLab, or the token's user cannot see it"
            ) from None
        raise
    projects = await gitlab.get_all(
        f"/groups/{ref}/projects",
        {"include_subgroups": "true", "with_shared": "false", "archived": "false"},
    )
    return [p for p in projects if not p.get("archived")]


async def _detect_version(gitlab: GitLab) -> Version:
    from bot.gitlab.client import GitLabError

    try:
        answer = await gitlab.get("/version")
    except GitLabError as exc:
        if exc.status == 401:
            raise RegisterError(
                "GitLab answered 401 to /version: the token is invalid or expired "
                "(it needs the `api` scope)"
            ) from None
        raise RegisterError(exc.advice()) from None
    version = Version.parse(str((answer or {}).get("version", "")))
    gitlab.detected_version = version
    return gitlab.version


def _check_url_option(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegisterError(
            f"--url {url!r} is not an http(s) URL (e.g. https://bot.example/webhook)", code=2
        )


async def run_register(
    settings: Settings,
    target: str,
    options: Options,
    *,
    group: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """The whole command: 0 when every project is registered, 1 when any failed."""
    import aiohttp

    from bot.gitlab.client import GitLab

    _check_url_option(options.url)
    if not settings.policy_dir.is_dir():
        raise RegisterError(f"POLICY_DIR {str(settings.policy_dir)!r} is not a folder", code=2)
    policy_set = PolicyStore(settings.policy_dir).load()
    policies = list(policy_set.policies)
    for name in dict.fromkeys(options.extra_checks):
        # Decided by a repository's policies (or status-check-policies): registered like a
        # central policy's check, for every project and branch
        # (docs/architecture.md#repository-policies).
        if policy_set.get(name) is None:
            policies.append(Policy(check=name, path="--check", digest="", rules=()))
    if not policies:
        raise RegisterError(f"POLICY_DIR {str(settings.policy_dir)!r} holds no policies")
    async with aiohttp.ClientSession() as session:
        gitlab = GitLab.from_settings(session, settings)
        version = await _detect_version(gitlab)
        projects = await find_projects(gitlab, target, group=group)
        checks = ", ".join(p.check for p in policies)
        print(
            f"GitLab {version}: {len(projects)} project{'s' if len(projects) != 1 else ''}, "
            f"checks {checks}, webhook {options.url}" + (" (dry run)" if options.dry_run else ""),
            file=out,
        )
        if not urlsplit(options.url).path.rstrip("/").endswith("/webhook"):
            print(
                "note: the bot receives deliveries on /webhook; make sure --url reaches it",
                file=out,
            )
        if options.webhook_secret is None:
            print("note: WEBHOOK_SECRET is unset: the webhooks get no secret token", file=out)
        if options.status_check_secret is not None and not compat.signs_status_checks(version):
            print(
                f"warning: STATUS_CHECK_SECRET is set but GitLab {version} cannot sign "
                "status-check requests (17.3+): the bot will answer them 401; "
                "unset STATUS_CHECK_SECRET",
                file=out,
            )
        limit = asyncio.Semaphore(PROJECTS_AT_ONCE)

        async def one(project: dict[str, Any]) -> ProjectReport:
            async with limit:
                return await register_project(gitlab, project, policies, options)

        tasks = [asyncio.create_task(one(p)) for p in projects]
        reports = []
        for task in tasks:  # printed in order, each as soon as it and those before it are done
            report = await task
            reports.append(report)
            print(report.render(options.dry_run), file=out, flush=True)
    failed = sum(r.error is not None for r in reports)
    changed = sum(bool(r.changes) and r.error is None for r in reports)
    verb = "would change" if options.dry_run else "changed"
    count = f"{len(reports)} project{'s' if len(reports) != 1 else ''}"
    summary = f"{count}: {changed} {verb}, {len(reports) - changed - failed} up to date"
    print(summary + (f", {failed} failed" if failed else ""), file=out)
    if options.dry_run:
        print("dry run: nothing was written", file=out)
    return 1 if failed else 0


def register(
    settings: Settings,
    target: str,
    *,
    url: str | None,
    dry_run: bool = False,
    require: bool = False,
    update_secrets: bool = False,
    prune: bool = False,
    group: bool = False,
    out: TextIO = sys.stdout,
    extra_checks: Sequence[str] = (),
) -> int:
    """Entry point for `python -m bot register`."""
    from bot.gitlab.client import GitLabError

    url = url or (f"{settings.public_url}/webhook" if settings.public_url else None)
    options = Options(
        url=url or "",
        webhook_secret=settings.webhook_secret,
        status_check_secret=settings.status_check_secret,
        dry_run=dry_run,
        require=require,
        update_secrets=update_secrets,
        prune=prune,
        extra_checks=tuple(extra_checks),
    )
    try:
        if not url:
            raise RegisterError("give the bot's webhook URL with --url (or set PUBLIC_URL)", code=2)
        return asyncio.run(run_register(settings, target, options, group=group, out=out))
    except RegisterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(f"error: invalid policy: {problem}", file=sys.stderr)
        return 1
    except GitLabError as exc:
        print(f"error: {advice(exc, target)}", file=sys.stderr)
        return 1

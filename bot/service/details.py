"""The details page: why each check of an MR is red or green, behind signed expiring links.

GitLab's status API carries no message, so the bot hands out signed links to `/mr/{id}/{iid}`
(see bot/links.py) and this page explains every check: the verdict for the MR's current head, the
rule tree with its evidence and what would make it pass, and the recent decision history.

"Current" is decided honestly: the MR and its status checks are read from GitLab at request time,
and a recorded verdict whose SHA is not the MR's head is shown as stale. When GitLab cannot be
read, the record is still shown, with a visible note that the head could not be confirmed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from bot.config import Settings
from bot.gitlab.client import GitLab, GitLabError
from bot.gitlab.snapshot import SnapshotReader, StatusCheck
from bot.keys import parse_reference
from bot.logs import get_logger
from bot.policy.explanation import Explanation, explain_outcome, spans
from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome, PolicySet
from bot.policy.predicates.base import plural
from bot.service.links import load_link_key, signed_link, verify
from bot.service.pgrecord import PgRecord, read_link_inputs_pg
from bot.service.record import DecisionRecord, StateError, check_state_dir

log = get_logger(__name__)

LINK_KEY = web.AppKey("link_key", bytes)

HISTORY_LIMIT = 30
GITLAB_WAIT = 5.0  # seconds the page waits for GitLab before rendering the record alone

_SECURITY_HEADERS = {
    # Everything on the page is server-rendered and escaped; this is the belt to those braces.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # The URL carries the signature: never hand it to GitLab (or anyone) as a Referer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Sources:
    """Where the page reads from; callables because the app builds them in its contexts."""

    gitlab: Callable[[], GitLab | None]
    record: Callable[[], DecisionRecord | PgRecord | None]
    policies: Callable[[], PolicySet]


# -- the key -------------------------------------------------------------------------------------


def links_ctx(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that loads the link key once at start (LINK_SECRET or STATE_DIR)."""

    async def _links_ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            app[LINK_KEY] = await asyncio.to_thread(
                load_link_key, settings.link_secret, settings.state_dir
            )
        except (OSError, ValueError) as exc:
            raise StateError(
                f"the link key in {str(settings.state_dir / 'link.key')!r} cannot be used "
                f"({getattr(exc, 'strerror', None) or exc}): delete it to make a new one "
                "(links handed out so far stop working), or set LINK_SECRET"
            ) from None
        yield

    return _links_ctx


# -- what the page shows -------------------------------------------------------------------------


def _verdict_row(row: dict[str, Any], head: str | None) -> dict[str, Any]:
    return {**row, "current": None if head is None else row["sha"] == head}


async def _read_gitlab(
    gitlab: GitLab | None, project_id: int, iid: int
) -> tuple[MergeRequestFacts | None, list[StatusCheck] | None, list[str]]:
    """The MR and its status checks (the same snapshot read as an evaluation's, without
    optional facts), or None for what could not be read, with why."""
    if gitlab is None:
        return None, None, ["the GitLab client is not started"]
    try:
        async with asyncio.timeout(GITLAB_WAIT):
            snapshot = await SnapshotReader(gitlab).read(project_id, iid, checks_optional=True)
    except TimeoutError:
        return None, None, [f"GitLab did not answer within {GITLAB_WAIT:g} s"]
    except (GitLabError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, None, [_problem("the merge request", exc)]
    if snapshot.checks_problem is not None:
        problem = f"could not read its status checks from GitLab: {snapshot.checks_problem}"
        return snapshot.facts, None, [problem]
    return snapshot.facts, list(snapshot.checks), []


def _problem(what: str, exc: BaseException) -> str:
    if isinstance(exc, GitLabError):
        return f"could not read {what} from GitLab: {exc.advice()}"
    log.error("details_gitlab_failed", error=repr(exc))
    return f"could not read {what} from GitLab: {type(exc).__name__}"


async def build_view(sources: Sources, project_id: int, iid: int) -> dict[str, Any]:
    """Everything the page shows, as plain data (the JSON variant is exactly this)."""
    record = sources.record()
    record_problems: list[str] = []
    (facts, listed, problems), latest, history = await asyncio.gather(
        _read_gitlab(sources.gitlab(), project_id, iid),
        _rows(record.latest(project_id, iid), record_problems) if record else _nothing(),
        (
            _rows(record.history(project_id, iid, HISTORY_LIMIT), record_problems)
            if record
            else _nothing()
        ),
    )
    if record is None:
        record_problems.append("the decision record is not open")
    head = facts.sha if facts is not None and facts.sha else None
    policies = sources.policies()
    by_check = {row["check"]: row for row in latest}
    checks: list[dict[str, Any]] = []
    names: list[str] = [c.name for c in listed or []]
    shown: dict[str, str] = {c.name: c.status for c in listed or []}
    for name in [*names, *(n for n in sorted(by_check) if n not in shown)]:
        row = by_check.get(name)
        if row is not None:
            note = None
            if listed is not None and name not in shown:
                note = "no longer a status check of this merge request"
        elif policies.get(name) is None:
            note = "no policy here decides this check (another service may own it)"
        else:
            note = "not evaluated yet"
        checks.append(
            {
                "check": name,
                "gitlab_status": shown.get(name),
                "has_policy": policies.get(name) is not None,
                "verdict": _verdict_row(row, head) if row else None,
                "note": note,
            }
        )
    recorded = next(iter(latest or history), None)
    return {
        "project_id": project_id,
        "iid": iid,
        "project_path": facts.project_path if facts else (recorded or {}).get("project_path"),
        "title": facts.title if facts else None,
        "state": facts.state if facts else None,
        "web_url": facts.web_url if facts else None,
        "head_sha": head,
        "gitlab_problems": problems,
        "record_problems": sorted(set(record_problems)),
        "checks": checks,
        "history": [_verdict_row(row, head) for row in history],
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


async def _nothing() -> list[dict[str, Any]]:
    return []


async def _rows(read: Any, problems: list[str]) -> list[dict[str, Any]]:
    """A record read, or nothing and the reason (the page shows what GitLab says regardless)."""
    try:
        return await read
    except StateError as exc:
        problems.append(str(exc))
        return []


def _safe_url(url: Any) -> str | None:
    text = str(url or "")
    return text if text.startswith(("https://", "http://")) else None


def shown(verdict: dict[str, Any] | None) -> Explanation:
    """A recorded verdict's rows and fixes, as bot/policy/explanation.py computes them for
    `explain` and the MR note too."""
    if not verdict or not verdict.get("outcome"):
        return Explanation()
    outcome = Outcome.from_dict(verdict["outcome"])
    return explain_outcome(outcome, applicable=bool(verdict.get("applicable", True)))


def code_spans(text: Any) -> Markup:
    """Text with its `...` spans as <code>, everything escaped (evidence quotes MR authors)."""
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if is_code else escape(part)
        for part, is_code in spans(str(text or ""))
    )


_templates.filters["spans"] = code_spans


# How each mark of a row looks on the page (the terminal's signs, with a word for the tooltip).
MARKS = {
    "passed": {"sign": "✓", "css": "pass", "title": "passed"},
    "failed": {"sign": "✗", "css": "fail", "title": "failed"},
    "undecided": {"sign": "?", "css": "undecided", "title": "undecided"},
    "not_applicable": {"sign": "○", "css": "not-applicable", "title": "not applicable"},
}


def failing(check: dict[str, Any]) -> bool:
    """The check fails: by the bot's verdict, or for a check no policy here decides, as GitLab
    shows it."""
    verdict = check["verdict"]
    if verdict is not None:
        return bool(verdict["verdict"] == "failed")
    return check["gitlab_status"] == "failed"


def summary(checks: list[dict[str, Any]]) -> str | None:
    """The page's first line: `2 of 5 checks failing`."""
    if not checks:
        return None
    count = sum(failing(check) for check in checks)
    return f"{count} of {plural(len(checks), 'check')} failing"


def render_html(view: dict[str, Any]) -> str:
    # Failing checks first (a stable sort: otherwise in GitLab's order).
    ordered = sorted(view["checks"], key=lambda check: not failing(check))
    checks = [{**check, "shown": shown(check["verdict"])} for check in ordered]
    return _templates.get_template("details.html").render(
        view=view,
        checks=checks,
        summary=summary(view["checks"]),
        any_failing=any(failing(check) for check in view["checks"]),
        web_url=_safe_url(view["web_url"]),
        marks=MARKS,
    )


# -- minting links (the `link` command) ---------------------------------------------------------


async def _project_id(state_dir: Path, path: str) -> int:
    record = DecisionRecord.open(state_dir, readonly=True)
    try:
        known = await record.known_projects()
    finally:
        await record.close()
    for project_id, known_path in known:
        if known_path.lower() == path.lower():
            return project_id
    raise StateError(
        f"project {path!r} is not in the decision record; give its numeric id (e.g. 17!42)"
    )


def _mint_fleet_link(settings: Settings, project: int | str, iid: int, ttl: float | None) -> str:
    """mint_link with DATABASE_URL: the fleet's key and projects are in PostgreSQL."""
    path = project if isinstance(project, str) else None
    key, project_id = asyncio.run(read_link_inputs_pg(str(settings.database_url), path))
    if key is None:
        raise StateError("no link key in PostgreSQL yet: start `serve` once, or set LINK_SECRET")
    if path is not None:
        if project_id is None:
            raise StateError(f"project {path!r} is not known to the bot: use its id (ID!IID)")
        project = int(project_id)
    return signed_link(
        key,
        int(project),
        iid,
        ttl=settings.link_ttl if ttl is None else ttl,
        base_url=settings.public_url or "",
    )


def mint_link(settings: Settings, reference: str, *, ttl: float | None = None) -> str:
    """A signed link to an MR's page, the one the server would accept (same key, same rules).

    Reads only settings and STATE_DIR. Never creates a key: a fresh one would not match the
    server's. Raises ValueError for a bad reference, StateError when no key or project is known.
    """
    project, iid = parse_reference(reference)
    if settings.database_url and not settings.link_secret:
        return _mint_fleet_link(settings, project, iid, ttl)
    if isinstance(project, str):
        project = asyncio.run(_project_id(settings.state_dir, project))
    key_file = settings.state_dir / "link.key"
    if not settings.link_secret:
        check_state_dir(settings.state_dir)
    if not settings.link_secret and not key_file.is_file():
        raise StateError(
            f"no link key: LINK_SECRET is unset and {str(key_file)!r} does not exist; "
            "set LINK_SECRET as the server has it, or STATE_DIR to the server's state folder"
        )
    try:
        key = load_link_key(settings.link_secret, settings.state_dir)
    except (OSError, ValueError) as exc:
        raise StateError(f"the link key in {str(key_file)!r} cannot be read: {exc}") from None
    return signed_link(
        key,
        project,
        iid,
        ttl=settings.link_ttl if ttl is None else ttl,
        base_url=settings.public_url or "",
    )


# -- HTTP ----------------------------------------------------------------------------------------


def _forbidden(as_json: bool) -> web.Response:
    message = (
        "This link is not signed or has expired. Ask the bot for a new one "
        "(the link in the merge request's note, or `python -m bot link PROJECT!IID`)."
    )
    if as_json:
        return web.json_response({"error": message}, status=403, headers=_SECURITY_HEADERS)
    html = _templates.get_template("forbidden.html").render(message=message)
    return web.Response(text=html, status=403, content_type="text/html", headers=_SECURITY_HEADERS)


def add_routes(app: web.Application, sources: Sources) -> None:
    """`GET /mr/{project_id}/{iid}` (HTML) and `.../{iid}.json`, both needing a signed link."""

    async def page(request: web.Request) -> web.Response:
        as_json = request.match_info.get("ext") == ".json"
        key = request.app.get(LINK_KEY)
        query = request.query
        if key is None or not verify(key, request.path, query.get("expires"), query.get("sig")):
            return _forbidden(as_json)
        project_id = int(request.match_info["project_id"])
        iid = int(request.match_info["iid"])
        view = await build_view(sources, project_id, iid)
        if as_json:
            return web.json_response(
                view, headers=_SECURITY_HEADERS, dumps=lambda v: json.dumps(v, ensure_ascii=False)
            )
        return web.Response(
            text=render_html(view), content_type="text/html", headers=_SECURITY_HEADERS
        )

    # Ids are bounded so they always fit SQLite's 64-bit integers.
    app.router.add_get(r"/mr/{project_id:\d{1,18}}/{iid:\d{1,18}}{ext:(\.json)?}", page)

"""The sticky MR note: one comment per MR that says what fails, why, and what would make it pass.

GitLab's status API carries no message, so a policy may opt in (`comment: on_failure` or
`comment: always`) to a note on the MR. All commenting checks of an MR share ONE note, found by a
hidden marker among the notes of the bot's own user and edited in place; it is written only when
its content changes (a digest of the rendered text sits in the marker), never re-posted. Note
failures (a 403, GitLab down) are logged once and never touch the evaluation or its verdicts.

The bot's own note reaches the bot again as a Note Hook; intake ignores every note that is not
`/recheck`, so commenting never triggers an evaluation.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.config import Settings
from bot.gitlab.client import GitLab, GitLabError
from bot.keys import MRKey
from bot.logs import get_logger
from bot.policy.explanation import Row, explanation, plain
from bot.policy.facts import MergeRequestFacts
from bot.service.decide import Decision
from bot.service.links import load_link_key, signed_link
from bot.service.preview import POLICY_CHECK, preview_lines

log = get_logger(__name__)

MARKER = "<!-- gitlab-status-bot:sticky-note"
# The note's first line, written by the bot only: what it says and until when its link is
# valid. Nothing else in a note is parsed: the rest quotes MR authors (titles, paths, labels).
_MARKER_RE = re.compile(
    r"<!-- gitlab-status-bot:sticky-note digest=([0-9a-f]+)(?: expires=(\d{1,12}))? -->"
)
_EXPIRES_RE = re.compile(r"[?&]expires=(\d+)")
COMMENTING = ("on_failure", "always")
MAX_EVIDENCE_CHARS = 300
MAX_LEAVES = 20
REFUSAL_PAUSE = 600.0  # after a 401/403 on notes, leave that project's notes alone this long


# -- rendering --------------------------------------------------------------------------------


def code(text: str, limit: int = MAX_EVIDENCE_CHARS) -> str:
    """`text` as an inline code span: nothing in it is Markdown, HTML, a mention or a reference.

    Evidence quotes what MR authors wrote (titles, paths, labels), so `@all`, `#1`, `<img>` or
    `**` in it must reach the reader as text. Whitespace collapses to one line; long text is cut.
    """
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    if not flat:
        return "`(empty)`"
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def is_failing(decision: Decision) -> bool:
    """The policy's rules fail: a failed verdict, or an advisory policy that would fail."""
    verdict = decision.verdict
    if verdict.status == "failed":
        return True
    return verdict.outcome is not None and verdict.applicable and not verdict.outcome.passed


def _failing_section(decision: Decision) -> list[str]:
    verdict = decision.verdict
    if verdict.status == "failed":
        lines = [f"#### ❌ {code(decision.check)} fails"]
    else:
        lines = [f"#### ⚠️ {code(decision.check)} would fail (advisory: it does not block)"]
    description = " ".join(decision.policy.description.split())
    if description:
        lines += ["", description]
    if verdict.outcome is None:
        return [*lines, "", f"- {code(plain(verdict.reason))}"]
    shown = explanation(verdict)
    leaves = shown.failing
    lines.append("")
    lines += [_leaf_line(leaf) for leaf in leaves[:MAX_LEAVES]]
    if len(leaves) > MAX_LEAVES:
        lines.append(f"- … and {len(leaves) - MAX_LEAVES} more on the details page")
    fixes = shown.fixes
    if len(fixes) == 1:
        lines += ["", f"**To pass:** {code(plain(fixes[0]))}"]
    elif fixes:
        lines += ["", "**To pass:**", *(f"- {code(plain(fix))}" for fix in fixes)]
    return lines


def _leaf_line(leaf: Row) -> str:
    """A failing rule as a list item: ✗, or ? for one GitLab's answer cannot decide."""
    if leaf.mark == "undecided":
        return f"- ? {code(plain(leaf.text))} (undecided)"
    return f"- ✗ {code(plain(leaf.text))}"


def _passing_line(decision: Decision) -> str:
    verdict = decision.verdict
    return f"- ✅ {code(decision.check)} passes: {code(plain(verdict.reason))}"


def render_body(decisions: Sequence[Decision]) -> str:
    """The note's visible text for the commenting checks of one evaluation (no link, no marker:
    those change without the verdicts changing). Deterministic: same verdicts, same text."""
    ordered = sorted(decisions, key=lambda d: d.check)
    failing = [d for d in ordered if is_failing(d)]
    blocking = [d for d in failing if d.verdict.status == "failed"]
    passing = [d for d in ordered if not is_failing(d)]
    total = len(ordered)
    if blocking and total == 1:
        head = "**This status check fails.**"
    elif blocking:
        head = f"**{len(blocking)} of {total} status checks fail.**"
    elif failing:
        head = f"**The {total} checks reported here pass** (advisory findings below)."
    else:
        head = (
            f"**The {total} checks reported here pass now.**" if total > 1 else "**It passes now.**"
        )
    lines = [head]
    for decision in failing:
        lines += ["", *_failing_section(decision)]
    if passing:
        lines += ["", *(_passing_line(d) for d in passing)]
    for decision in ordered:
        lines += _preview_section(decision)
    return "\n".join(lines)


def _preview_section(decision: Decision) -> list[str]:
    """For an MR changing its repository's policies: the open MRs whose verdict would flip
    (bot/service/preview.py), each on its line."""
    found = preview_lines(decision.verdict.outcome) if decision.check == POLICY_CHECK else []
    if not found:
        return []
    summary, *flips = found
    lines = ["", "#### Policy preview", "", _sentence(plain(summary.removeprefix("preview: ")))]
    if flips:
        lines.append("")
        lines += [f"- {code(plain(flip))}" for flip in flips[:MAX_LEAVES]]
        if len(flips) > MAX_LEAVES:
            lines.append(f"- … and {len(flips) - MAX_LEAVES} more on the details page")
    return lines


def compose(body: str, link: str | None) -> tuple[str, str]:
    """The full note and its digest. The digest covers the visible text and where the link
    points (not its expiry or signature), so a fresh signature alone never edits the note."""
    where = link.split("?", 1)[0] if link else ""
    digest = hashlib.sha256(f"{body}\n{where}".encode()).hexdigest()[:16]
    expires = _link_expiry(link)
    until = f" expires={int(expires)}" if expires is not None else ""
    parts = [f"{MARKER} digest={digest}{until} -->", body]
    if link:
        parts += ["", f"[Details: every rule, its evidence and the history]({link})"]
    parts += [
        "",
        "<sub>Kept up to date by the status check bot; edited when a verdict changes. "
        "Comment <code>/recheck</code> to evaluate again.</sub>",
    ]
    return "\n".join(parts), digest


def _link_expiry(link: str | None) -> float | None:
    """The `expires` of a signed link the bot made (never of text from a note: see `_marker`)."""
    match = _EXPIRES_RE.search(link or "")
    return float(match[1]) if match else None


def _marker(body: str) -> tuple[str, float | None] | None:
    """(digest, link expiry) from the bot's marker, which is the note's whole first line."""
    match = _MARKER_RE.fullmatch(body.partition("\n")[0].strip())
    if match is None:
        return None
    return match[1], float(match[2]) if match[2] else None


LinkMaker = Callable[[MRKey, float], str | None]


def details_links(settings: Settings, key: bytes | None = None) -> LinkMaker | None:
    """Signed links to the details page, or None when PUBLIC_URL is not set (no link then)."""
    base_url = settings.public_url
    if not base_url:
        return None
    if key is None:
        try:
            key = load_link_key(settings.link_secret, settings.state_dir)
        except OSError as exc:
            log.error("link_key_unavailable", error=str(exc), effect="MR notes carry no link")
            return None
    link_key = key

    def link(mr: MRKey, now: float) -> str:
        return signed_link(
            link_key, mr.project_id, mr.iid, ttl=settings.link_ttl, base_url=base_url, now=now
        )

    return link


# -- keeping the note -------------------------------------------------------------------------


@dataclass
class _Known:
    """What we know of an MR's note: its id (None: there is none) and what it says."""

    note_id: int | None
    digest: str | None = None
    link_expires: float | None = None


class StickyNotes:
    """An `Evaluator.evaluation_listeners` entry that keeps the one note per MR up to date."""

    def __init__(
        self,
        gitlab: GitLab,
        *,
        link_for: LinkMaker | None = None,
        link_ttl: float = 7 * 24 * 3600.0,
        max_entries: int = 10_000,
        on_write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gitlab = gitlab
        self.link_for = link_for
        self.link_ttl = link_ttl
        self.max_entries = max_entries
        self.on_write = on_write
        self.clock = clock
        self._known: OrderedDict[MRKey, _Known] = OrderedDict()
        self._user_id: int | None = None
        self._refused: dict[int, float] = {}  # project id -> monotonic time to try again
        self._warned: set[tuple[int, int | None]] = set()

    async def __call__(
        self, key: MRKey, facts: MergeRequestFacts, decisions: list[Decision]
    ) -> None:
        commenting = [d for d in decisions if d.policy.comment in COMMENTING]
        if not commenting:
            return
        until = self._refused.get(key.project_id)
        if until is not None:
            if time.monotonic() < until:
                return
            del self._refused[key.project_id]
        try:
            await self._keep(key, facts, commenting)
        except GitLabError as exc:
            self._known.pop(key, None)  # we no longer know what the note says: read it next time
            self._on_error(key, facts, exc)

    async def _keep(self, key: MRKey, facts: MergeRequestFacts, decisions: list[Decision]) -> None:
        wanted = any(d.policy.comment == "always" or is_failing(d) for d in decisions)
        known = self._known.get(key)
        if known is None:
            if not wanted and all(d.action == "unchanged" for d in decisions):
                # GitLab already showed these passes, so whoever posted them (this bot, before a
                # restart) also updated the note then: no need to read the MR's notes. This
                # keeps a sweep over passing MRs free of note reads.
                return
            # Look even when nothing fails: a note from before a restart may need "passes now".
            known = await self._find(key)
        if known.note_id is None and not wanted:
            self._remember(key, known)
            return
        link = self.link_for(key, self.clock()) if self.link_for else None
        text, digest = compose(render_body(decisions), link)
        if known.note_id is not None and known.digest == digest and not self._link_ageing(known):
            self._remember(key, known)
            return
        expires = _link_expiry(link)
        if known.note_id is not None:
            try:
                await self.gitlab.update_note(key.project_id, key.iid, known.note_id, text)
            except GitLabError as exc:
                if exc.status != 404:
                    raise
                # Someone deleted the note: write a new one (only if there is something to say).
                if not wanted:
                    self._remember(key, _Known(None))
                    return
            else:
                self._remember(key, _Known(known.note_id, digest, expires))
                self._wrote("updated", key, facts, decisions)
                return
        note = await self.gitlab.create_note(key.project_id, key.iid, text)
        self._remember(key, _Known(int(note["id"]), digest, expires))
        self._wrote("created", key, facts, decisions)

    async def _find(self, key: MRKey) -> _Known:
        """After a restart (or on first sight): the bot's marked note among the MR's notes."""
        if self._user_id is None:
            user = await self.gitlab.current_user()
            self._user_id = int(user["id"])
        notes = await self.gitlab.list_notes(key.project_id, key.iid)
        mine = [
            note
            for note in notes
            if isinstance(note, dict)
            and not note.get("system")
            and (note.get("author") or {}).get("id") == self._user_id
            and str(note.get("body") or "").startswith(MARKER)
        ]
        if not mine:
            return _Known(None)
        note = min(mine, key=lambda n: int(n["id"]))  # the first one stays the sticky one
        marker = _marker(str(note.get("body") or ""))
        if marker is None:
            return _Known(int(note["id"]), None, None)
        return _Known(int(note["id"]), marker[0], marker[1])

    def _link_ageing(self, known: _Known) -> bool:
        """The note's signed link has less than half its lifetime left (or its marker does not
        say, as a note written before the marker carried it): re-sign it."""
        if self.link_for is None:
            return False
        if known.link_expires is None:
            return True
        return known.link_expires - self.clock() < self.link_ttl / 2

    def _remember(self, key: MRKey, known: _Known) -> None:
        self._known[key] = known
        self._known.move_to_end(key)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def _wrote(
        self, action: str, key: MRKey, facts: MergeRequestFacts, decisions: list[Decision]
    ) -> None:
        if self.on_write is not None:
            self.on_write(action)
        log.info(
            "note_written",
            action=action,
            project=facts.project_path,
            mr=key.iid,
            checks=sorted(d.check for d in decisions),
            failing=sorted(d.check for d in decisions if is_failing(d)),
        )

    def _on_error(self, key: MRKey, facts: MergeRequestFacts, exc: GitLabError) -> None:
        if self.on_write is not None:
            self.on_write("failed")
        if exc.status in (401, 403):
            self._refused[key.project_id] = time.monotonic() + REFUSAL_PAUSE
        warn_key = (key.project_id, exc.status)
        if warn_key in self._warned:
            log.debug("note_failed", project=facts.project_path, mr=key.iid, status=exc.status)
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add(warn_key)
        log.error(
            "note_failed",
            project=facts.project_path,
            mr=key.iid,
            path=exc.path,
            advice=exc.advice(),
            effect="the verdicts are posted as usual; only the MR note is not written",
        )


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."

"""The per-MR work queue in PostgreSQL: the coalescing queue of bot/service/queue.py, shared by
every replica (docs/queue.md).

One row per key in `bot_work`, however many deliveries ask for it. A delivery is answered only
after its row is committed (`enqueue`), so the death of the replica that took it loses nothing:
any replica's worker claims the row. A claim is one `UPDATE ... FOR UPDATE SKIP LOCKED` that sets
`owner` on an unowned row, so a key is never run by two workers anywhere at once; the owner keeps
a lease alive by heartbeat, and a lease that runs out (the owner was killed) puts the key back in
line for another replica. The rules of the in-process queue hold: the newest hint wins, the first
delivery for an idle MR runs at once, a busy MR keeps the turn of its first delivery, two starts
of one MR are EVALUATION_SPACING apart, and the sweep's background lane runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, Literal, TypeVar

from bot.keys import BranchKey, Hint, MRKey, PushKey
from bot.logs import get_logger
from bot.service.database import (
    DB_ERRORS,
    WORK_CHANNEL,
    Database,
    data_error,
    unreachable,
)

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
Handler = Callable[[K, Any], Awaitable[float | None]]

LEASE = 5.0  # seconds a claim lives without a heartbeat (a killed owner's work moves after this)
HEARTBEAT = 1.0  # seconds between heartbeats (well inside LEASE)
POLL = 1.0  # at most this long between looks at the table when nothing is notified
REAP_EVERY = 1.0  # seconds between looks for expired leases
CLEAN_EVERY = 30.0  # seconds between deletions of idle rows and old delivery ids
IDLE_ROW_AGE = 60.0  # an idle row (nothing asked, no timer) older than this is deleted
DEDUPE_TTL = 3600.0  # as intake.DEDUPE_TTL: delivery ids are remembered for an hour
MAX_HELD = 10_000  # deliveries held in memory while PostgreSQL is unreachable; then 503
# The longest key text stored as it is; a longer one (a branch name of up to MAX_REF_CHARS
# characters, escaped) is stored by its digest, with the text in `full_key`: a btree row (the
# primary key) holds at most 2704 bytes.
MAX_KEY_CHARS = 1000

# "invalid": PostgreSQL refused the delivery's values (the sender's mistake: a 400); "failed":
# PostgreSQL answered with another error (not held: deliver again later, a 503).
Accepted = Literal["queued", "held", "duplicate", "unavailable", "invalid", "failed"]


class Codec(Generic[K]):
    """How keys and hints are stored: a key as text (the row's primary key), a hint as JSON."""

    def key(self, key: K) -> str:
        return json.dumps(key)

    def stored(self, key: K) -> tuple[str, str | None]:
        """The key as the row's primary key, and its full text when that is a digest."""
        return self.key(key), None

    def learn(self, text: str, full: str | None) -> None:
        """A claimed row's full key text (`stored`), read before `unkey(text)`."""

    def unkey(self, text: str) -> K:
        value: K = json.loads(text)
        return value

    def hint(self, hint: Any) -> str:
        return json.dumps(hint)

    def unhint(self, text: str | None) -> Any:
        return None if text is None else json.loads(text)


def _storable(value: Any) -> Any:
    """A hint's value as jsonb takes it: no NUL (\\u0000 is refused), no lone surrogate."""
    if isinstance(value, str):
        value = value.replace("\x00", "")
        if any("\ud800" <= c <= "\udfff" for c in value):
            value = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


class WorkCodec(Codec[MRKey | BranchKey]):
    """MR and branch keys, and Hint, as the service queues them.

    A key is JSON text with non-ASCII escaped (as every release has stored it, so rows written by
    an older replica still coalesce). A key longer than MAX_KEY_CHARS is stored as
    ["long", project, sha256 of its text], with the text in `full_key`; a replica that claims
    it learns the text from the claim (`learn`). An older replica would read that as a branch
    named by the digest, which has no MRs: harmless."""

    def __init__(self) -> None:
        self._full: dict[str, str] = {}  # digest key -> full text (facts: never stale)

    def _text(self, key: MRKey | BranchKey) -> str:
        if isinstance(key, MRKey):
            return json.dumps(["mr", key.project_id, key.iid])
        if isinstance(key, PushKey):  # a push and a branch's pipeline never coalesce
            return json.dumps(["push", key.project_id, key.branch])
        return json.dumps(["branch", key.project_id, key.branch])

    def stored(self, key: MRKey | BranchKey) -> tuple[str, str | None]:
        text = self._text(key)
        if len(text) <= MAX_KEY_CHARS:
            return text, None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        short = json.dumps(["long", key.project_id, digest])
        self.learn(short, text)
        return short, text

    def key(self, key: MRKey | BranchKey) -> str:
        return self.stored(key)[0]

    def learn(self, text: str, full: str | None) -> None:
        if full is not None:
            if len(self._full) >= 4096:
                self._full.clear()
            self._full[text] = full

    def unkey(self, text: str) -> MRKey | BranchKey:
        kind, project_id, rest = json.loads(text)
        if kind == "long":
            full = self._full.get(text)
            if full is None:  # not learnt: a row without its text (cannot happen by design)
                log.error("work_key_unknown", key=text)
            else:
                kind, project_id, rest = json.loads(full)
        if kind == "mr":
            return MRKey(int(project_id), int(rest))
        if kind == "push":
            return PushKey(int(project_id), str(rest))
        return BranchKey(int(project_id), str(rest))

    def hint(self, hint: Any) -> str:
        if not isinstance(hint, Hint):
            return json.dumps(None)
        return json.dumps({k: _storable(v) for k, v in dataclasses.asdict(hint).items()})

    def unhint(self, text: str | None) -> Any:
        data = None if text is None else json.loads(text)
        if not isinstance(data, dict):
            return Hint()
        fields = {f.name for f in dataclasses.fields(Hint)}
        return Hint(**{k: v for k, v in data.items() if k in fields})


def delivery_digest(delivery_id: str) -> bytes:
    """A delivery id as stored (16 bytes, like intake.DeliveryMemory)."""
    return hashlib.blake2b(delivery_id.encode("utf-8", "surrogateescape"), digest_size=16).digest()


_ENQUEUE = f"""
WITH fresh AS (
    INSERT INTO bot_deliveries (id) SELECT $1::bytea WHERE $1::bytea IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING id
), work AS (
    INSERT INTO bot_work AS w (key, full_key, requested, background, hint, turn)
    SELECT k, f, true, false, h, nextval('bot_turns')
    FROM unnest($2::text[], $3::jsonb[], $5::text[]) AS t(k, h, f)
    WHERE $1::bytea IS NULL OR EXISTS (SELECT 1 FROM fresh)
    ON CONFLICT (key) DO UPDATE SET
        full_key = coalesce(excluded.full_key, w.full_key),
        requested = true,
        background = false,
        hint = excluded.hint,
        turn = CASE WHEN w.requested AND NOT w.background THEN w.turn ELSE excluded.turn END,
        touched = now()
    RETURNING key
)
SELECT (SELECT count(*) FROM work) AS queued, pg_notify('{WORK_CHANNEL}', $4)
"""

_ENQUEUE_BACKGROUND = f"""
WITH work AS (
    INSERT INTO bot_work (key, requested, background, hint, full_key)
    VALUES ($1, true, true, $2::jsonb, $3)
    ON CONFLICT (key) DO NOTHING RETURNING key
)
SELECT (SELECT count(*) FROM work), pg_notify('{WORK_CHANNEL}', '')
"""
# A key already in the table is queued, running, cooling or waiting for a timer: the sweep's
# evaluation would read the same state, except for an idle row, which it asks to run.
_WAKE_IDLE_BACKGROUND = """
UPDATE bot_work SET requested = true, background = true, hint = $2::jsonb, touched = now()
WHERE key = $1 AND owner IS NULL AND NOT requested AND wake_at IS NULL
"""

_LATER = f"""
WITH timer AS (
    INSERT INTO bot_work (key, hint, wake_at, full_key)
    VALUES ($1, $2::jsonb, clock_timestamp() + make_interval(secs => $3::float8), $4)
    ON CONFLICT (key) DO UPDATE SET
        full_key = coalesce(excluded.full_key, bot_work.full_key),
        wake_at = excluded.wake_at, hint = coalesce(bot_work.hint, excluded.hint), touched = now()
)
SELECT pg_notify('{WORK_CHANNEL}', '')
"""

_CLAIM = """
WITH next AS (
    SELECT key FROM bot_work
    WHERE owner IS NULL AND (
        (requested AND (not_before IS NULL OR not_before <= clock_timestamp()))
        OR (NOT requested AND wake_at <= clock_timestamp()))
    ORDER BY (requested AND background), turn NULLS LAST, key
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE bot_work w SET
    owner = $1,
    claim = nextval('bot_claims'),
    lease_until = clock_timestamp() + make_interval(secs => $2),
    running_hint = w.hint,
    hint = NULL,
    requested = false,
    background = false,
    turn = NULL,
    wake_at = NULL,
    not_before = clock_timestamp() + make_interval(secs => $3),
    touched = now()
FROM next WHERE w.key = next.key
RETURNING w.key, w.running_hint::text AS hint, w.claim, w.full_key
"""

# $2: the handler's delay (NULL: nothing more to do; <= 0: again at once; > 0: a timer).
# `again`: the claim no longer matches (its lease ran out and the key was put back in line, maybe
# run by another replica meanwhile). This run may have judged an older state than the one the
# other run saw, so the key is asked for once more: the newest state is judged last.
_FINISH = f"""
WITH done AS (
    UPDATE bot_work SET
        owner = NULL,
        claim = NULL,
        lease_until = NULL,
        requested = requested OR coalesce($2::float8 <= 0, false),
        hint = CASE WHEN requested THEN hint ELSE running_hint END,
        turn = CASE
            WHEN requested THEN turn
            WHEN coalesce($2::float8 <= 0, false) THEN nextval('bot_turns')
            ELSE NULL END,
        wake_at = CASE
            WHEN requested OR $2::float8 IS NULL OR $2::float8 <= 0 THEN NULL
            ELSE clock_timestamp() + make_interval(secs => $2::float8) END,
        running_hint = NULL,
        touched = now()
    WHERE key = $1 AND claim = $3
    RETURNING requested OR wake_at IS NOT NULL AS pending
), again AS (
    INSERT INTO bot_work AS w (key, requested, background, hint, turn)
    SELECT $1, true, false, $4::jsonb, nextval('bot_turns') WHERE NOT EXISTS (SELECT 1 FROM done)
    ON CONFLICT (key) DO UPDATE SET
        requested = true,
        background = false,
        hint = coalesce(w.hint, excluded.hint),
        turn = CASE WHEN w.requested AND NOT w.background THEN w.turn ELSE excluded.turn END,
        touched = now()
    RETURNING key
)
SELECT
    coalesce((SELECT pending FROM done), false) AS pending,
    EXISTS (SELECT 1 FROM again) AS again,
    (SELECT count(pg_notify('{WORK_CHANNEL}', '')) FROM again) AS notified
"""

# Claims of this replica given back (a graceful stop) or of anyone whose lease ran out.
_RELEASE = """
UPDATE bot_work SET owner = NULL, claim = NULL, lease_until = NULL, requested = true,
    hint = coalesce(hint, running_hint), turn = coalesce(turn, nextval('bot_turns')),
    running_hint = NULL, touched = now()
WHERE owner = $1
"""
# `expired` reads the owner before the UPDATE clears it (RETURNING gives the new row's values).
_REAP = f"""
WITH expired AS (
    SELECT key, owner FROM bot_work
    WHERE owner IS NOT NULL AND lease_until < clock_timestamp()
    FOR UPDATE SKIP LOCKED
), reaped AS (
    UPDATE bot_work w SET owner = NULL, claim = NULL, lease_until = NULL, requested = true,
        hint = coalesce(w.hint, w.running_hint), turn = coalesce(w.turn, nextval('bot_turns')),
        running_hint = NULL, touched = now()
    FROM expired WHERE w.key = expired.key
    RETURNING w.key, expired.owner
)
SELECT key, owner, pg_notify('{WORK_CHANNEL}', '') FROM reaped
"""

_LOOK = """
SELECT
    extract(epoch FROM min(CASE
        WHEN owner IS NOT NULL THEN NULL
        WHEN requested THEN coalesce(not_before, clock_timestamp())
        ELSE wake_at END) - clock_timestamp()) AS next_in,
    count(*) FILTER (WHERE requested) AS depth,
    count(*) FILTER (WHERE requested AND background) AS background,
    count(*) FILTER (WHERE owner IS NOT NULL) AS running,
    count(*) FILTER (WHERE wake_at IS NOT NULL) AS scheduled
FROM bot_work
"""

# Returns the claims renewed: a claim missing from them was lost (docs/queue.md, "A lease that
# runs out while its owner still works").
_HEARTBEAT = """
UPDATE bot_work SET lease_until = clock_timestamp() + make_interval(secs => $2)
WHERE owner = $1 AND claim = ANY($3::bigint[])
RETURNING claim
"""

_CLEAN = """
WITH idle AS (
    DELETE FROM bot_work WHERE owner IS NULL AND NOT requested AND wake_at IS NULL
    AND touched < now() - make_interval(secs => $1)
    AND (not_before IS NULL OR not_before < now())
)
DELETE FROM bot_deliveries WHERE at < now() - make_interval(secs => $2)
"""


@dataclasses.dataclass
class _Run:
    """One evaluation running here, under one claim."""

    key: str
    task: asyncio.Future[float | None] | None = None  # the handler's
    lost: bool = False  # a heartbeat found the claim gone: the handler was cancelled


Row = tuple[str, str, str | None]  # a delivery's key as stored, its hint, the key's full text


class PgQueue(Generic[K]):
    """The work queue of one replica over the shared `bot_work` table (see the module doc).

    Same interface as CoalescingQueue, plus `enqueue`: the durable submit intake awaits."""

    def __init__(
        self,
        handler: Handler[K],
        db: Database,
        *,
        workers: int = 8,
        min_interval: float = 0.0,
        codec: Codec[K] | None = None,
        lease: float = LEASE,
    ) -> None:
        self._handler = handler
        self.db = db
        self._workers = workers
        self._min_interval = min_interval
        self.codec: Codec[K] = codec if codec is not None else Codec()
        self.lease = lease
        self.owner = db.name
        self._accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: list[asyncio.Event] = []
        # Workers waiting for work. One is woken per notification (a local delivery, LISTEN):
        # waking them all would send one empty claim per idle worker.
        self._idle: list[asyncio.Event] = []
        self._look = asyncio.Event()  # the dispatcher should look at the table (due times)
        # Running here, by claim (not by key: a key whose lease ran out may be claimed again
        # by this replica while the first run is still ending).
        self._claims: dict[int, _Run] = {}
        self._beating = False  # the heartbeat runs until the last evaluation here has ended
        self._beat: asyncio.Task[None] | None = None
        self._inner: set[asyncio.Task[Any]] = set()  # submits made from a handler or a timer
        self._submit_order = asyncio.Lock()  # `submit`s reach the table in the order made
        # Deliveries accepted while PostgreSQL was unreachable: (delivery digest, rows), sent
        # in order once it answers (README "Running more than one": what happens meanwhile).
        self._held: list[tuple[bytes | None, list[Row]]] = []
        self._held_task: asyncio.Task[None] | None = None
        self._last_look: dict[str, Any] = {}
        self.evaluations = 0
        self.recovered = 0  # keys taken over from a replica whose lease ran out

    # -- producers --------------------------------------------------------------------------

    async def enqueue(
        self, work: Iterable[tuple[K, Any]], delivery_id: str | None = None
    ) -> Accepted:
        """Commit a delivery's keys (and its id, for de-duplication across the fleet) before
        it is answered. PostgreSQL unreachable: held here and sent when it answers. PostgreSQL
        refusing it (a value it cannot store): "invalid", neither held nor remembered."""
        if not self._accepting:
            return "unavailable"
        rows = [(*self.codec.stored(key), self.codec.hint(hint)) for key, hint in work]
        held = [(key, hint, full) for key, full, hint in rows]
        digest = delivery_digest(delivery_id) if delivery_id is not None else None
        if self._held:  # keep order: a newer delivery never overtakes a held one
            return self._hold(digest, held)
        try:
            queued = await self._insert(digest, held)
        except DB_ERRORS as exc:
            if unreachable(exc):
                self.db.failed(exc, "enqueue")
                return self._hold(digest, held)
            self.db.ok()  # it answered
            refused: Accepted = "invalid" if data_error(exc) else "failed"
            log.error(
                "delivery_not_stored",
                error=self.db.describe(exc),
                keys=[key for key, _, _ in held],
                effect="refused with a 400 (a value PostgreSQL cannot store)"
                if refused == "invalid"
                else "refused with a 503: PostgreSQL answered with an error",
            )
            return refused
        self.db.ok()
        self._wake_one()
        return "queued" if queued else "duplicate"

    async def _insert(self, digest: bytes | None, rows: list[Row]) -> int:
        keys = [key for key, _, _ in rows]
        hints = [hint for _, hint, _ in rows]
        fulls = [full for _, _, full in rows]
        record = await self.db.fetchrow(_ENQUEUE, digest, keys, hints, self.owner, fulls)
        return int(record["queued"]) if record is not None else 0

    def _hold(self, digest: bytes | None, rows: list[Row]) -> Accepted:
        if len(self._held) >= MAX_HELD:
            return "unavailable"
        self._held.append((digest, rows))
        if self._held_task is None or self._held_task.done():
            self._held_task = asyncio.create_task(self._send_held(), name="work-held")
        return "held"

    async def _send_held(self) -> None:
        delay = 0.2
        while self._held:
            digest, rows = self._held[0]
            try:
                await self._insert(digest, rows)
            except DB_ERRORS as exc:
                if data_error(exc):  # it would fail the same way forever: the rest must go on
                    self.db.ok()
                    self._held.pop(0)
                    log.error(
                        "held_delivery_dropped",
                        error=self.db.describe(exc),
                        keys=[key for key, _, _ in rows],
                        effect="PostgreSQL cannot store it; the sweep will heal its MRs",
                    )
                    continue
                if unreachable(exc):
                    self.db.failed(exc, "enqueue")
                else:
                    self.db.ok()
                    log.warning(
                        "held_delivery_refused", error=self.db.describe(exc), retry_in=delay
                    )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            self.db.ok()
            self._held.pop(0)
            delay = 0.2
            if not self._held:
                log.info("held_deliveries_queued")
            self._wake_one()

    def submit(self, key: K, hint: Any = None) -> bool:
        """Ask for `key` from inside the service (a branch's MRs, a version learnt): queued in
        the background of this call; a worker waits for it before it finishes its own key."""
        if not self._accepting:
            return False

        async def in_order() -> None:
            async with self._submit_order:
                await self.enqueue([(key, hint)])

        self._spawn(in_order())
        return True

    async def submit_background(self, key: K, hint: Any = None) -> bool:
        """The sweep's lane: run when no delivery waits; nothing if the key is already in line."""
        if not self._accepting:
            return False
        (text, full), hint_text = self.codec.stored(key), self.codec.hint(hint)
        row = await self.db.fetchrow(_ENQUEUE_BACKGROUND, text, hint_text, full)
        if row is not None and not row[0]:
            await self.db.execute(_WAKE_IDLE_BACKGROUND, text, hint_text)
        self._wake_one()
        return True

    def submit_later(self, key: K, delay: float, hint: Any = None) -> None:
        """Evaluate `key` again after `delay` seconds: a timer in the row, so it survives this
        replica (a worker's own timers come from `_FINISH`)."""

        async def later() -> None:
            text, full = self.codec.stored(key)
            await self.db.execute(_LATER, text, self.codec.hint(hint), delay, full)

        if self._accepting:
            self._spawn(later())

    def cancel_timer(self, key: K) -> None:
        """Timers live in the table and are replaced by the next evaluation's outcome."""

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._inner.add(task)
        task.add_done_callback(self._inner.discard)

    # -- introspection (as of the last look at the table) ------------------------------------

    @property
    def depth(self) -> int:
        return int(self._last_look.get("depth") or 0) + sum(len(r) for _, r in self._held)

    @property
    def background_depth(self) -> int:
        return int(self._last_look.get("background") or 0)

    @property
    def running(self) -> int:
        return int(self._last_look.get("running") or 0)

    @property
    def local_running(self) -> int:
        return len(self._claims)

    @property
    def scheduled(self) -> int:
        return int(self._last_look.get("scheduled") or 0)

    async def look(self) -> dict[str, Any]:
        """Read the table's counts now (and keep them for the properties above)."""
        row = await self.db.fetchrow(_LOOK)
        self._last_look = dict(row) if row is not None else {}
        return self._last_look

    async def _poll(self, done: Callable[[], Awaitable[bool]]) -> None:
        # Polling: the state is the fleet's, in the table; no local event can announce it.
        while self._accepting and not await done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def wait_background_below(self, limit: int) -> None:
        async def below() -> bool:
            return int((await self.look()).get("background") or 0) < limit

        await self._poll(below)

    async def wait_for(self, keys: set[K]) -> None:
        """Wait until none of `keys` is queued or running anywhere in the fleet."""
        texts = [self.codec.key(key) for key in keys]

        async def idle() -> bool:
            busy = await self.db.fetchval(
                "SELECT count(*) FROM bot_work WHERE key = ANY($1::text[]) "
                "AND (requested OR owner IS NOT NULL)",
                texts,
            )
            return not busy

        await self._poll(idle)

    async def join(self) -> None:
        """Wait until nothing is queued, held or running in the fleet (timers may be set)."""
        while True:
            await asyncio.gather(*list(self._inner), return_exceptions=True)
            look = await self.look()
            idle = not look.get("depth") and not look.get("running")
            if idle and not self._held and not self._inner:
                return
            await asyncio.sleep(0.02)

    # -- workers ----------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        # Its own notifications are not news: the replica woke a worker when it enqueued.
        self.db.on_notify(lambda payload: None if payload == self.owner else self._wake_one())
        self._wakes = [asyncio.Event() for _ in range(self._workers)]
        self._tasks = [
            asyncio.create_task(self._worker(wake), name=f"evaluation-worker-{n}")
            for n, wake in enumerate(self._wakes)
        ]
        self._tasks.append(asyncio.create_task(self._dispatch(), name="work-dispatch"))
        self._beating = True
        self._beat = asyncio.create_task(self._heartbeat(), name="work-heartbeat")
        self._tasks.append(self._beat)

    def _wake_one(self) -> None:
        """Work may have arrived: one idle worker tries a claim (busy ones claim again as they
        finish)."""
        while self._idle:
            wake = self._idle.pop()
            if not wake.is_set():
                wake.set()
                return
        self._look.set()

    async def stop(self, deadline: float = 10.0) -> int:
        """Stop claiming; let running evaluations finish up to `deadline`, their leases kept
        alive meanwhile (else another replica would start them too); give the rest back to the
        fleet (another replica takes them at once); return the keys given back."""
        self._accepting = False
        for wake in self._wakes:
            wake.set()
        self._look.set()
        workers = self._tasks[: self._workers]
        helpers = [task for task in self._tasks[self._workers :] if task is not self._beat]
        for task in helpers:
            task.cancel()
        if workers:
            await asyncio.wait(workers, timeout=deadline)
        abandoned = len(self._claims)
        for task in workers:
            task.cancel()
        # Bounded: a task that lost its cancellation must not hold up the stop.
        if workers:
            await asyncio.wait(workers, timeout=3)
        self._beating = False  # only now: the runs have ended (or were cancelled)
        if self._beat is not None:
            self._beat.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3)
        self._beat = None
        self._tasks = []
        for task in list(self._inner):
            task.cancel()
        await asyncio.gather(*list(self._inner), return_exceptions=True)
        with contextlib.suppress(*DB_ERRORS):
            await asyncio.wait_for(self.db.execute(_RELEASE, self.owner), 3)
        if self._held_task is not None:
            self._held_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._held_task
        if self._held:
            log.error(
                "held_deliveries_lost",
                deliveries=len(self._held),
                effect="PostgreSQL never came back before the stop; the sweep will heal them",
            )
        self._claims.clear()
        return abandoned

    async def _worker(self, wake: asyncio.Event) -> None:
        delay = 0.1
        woken = False  # by a notification, rather than looking again after a run
        while self._accepting:
            wake.clear()
            try:
                item = await self.db.fetchrow(_CLAIM, self.owner, self.lease, self._min_interval)
            except DB_ERRORS as exc:
                self.db.failed(exc, "claim")
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            delay = 0.1
            self.db.ok()
            if item is None:
                if woken:  # asked for but not ready: cooling; the dispatcher times its turn
                    self._look.set()
                self._idle.append(wake)
                await wake.wait()
                woken = True
                continue
            woken = False
            self.codec.learn(str(item["key"]), item["full_key"])
            await self._run(str(item["key"]), item["hint"], int(item["claim"]))

    async def _run(self, text: str, hint_text: str | None, claim: int) -> None:
        run = self._claims[claim] = _Run(text)
        try:
            key = self.codec.unkey(text)
            hint = self.codec.unhint(hint_text)
            delay: float | None = None
            self.evaluations += 1
            # A task of its own, so that a heartbeat that finds the claim lost can cancel it
            # before it posts a verdict another replica may already have replaced.
            run.task = asyncio.ensure_future(self._handler(key, hint))
            try:
                delay = await run.task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not run.lost or (me is not None and me.cancelling()):
                    raise  # this worker is being stopped
            except Exception:
                log.exception("evaluation_crashed", key=str(key))
            # What the evaluation queued (a branch's MRs) is committed before its key is finished.
            if self._inner:
                await asyncio.gather(*list(self._inner), return_exceptions=True)
            if await self._finish(text, claim, delay, hint_text):
                self._look.set()  # asked for again meanwhile, or a timer: the dispatcher times it
        finally:
            self._claims.pop(claim, None)

    async def _finish(
        self, text: str, claim: int, delay: float | None, hint_text: str | None
    ) -> bool:
        """Give the key back with what comes next; retried while PostgreSQL is away (the lease
        may run out meanwhile: then another replica has already put it back in line). A claim
        that no longer matches asks for the key once more (`_FINISH`)."""
        wait = 0.1
        while True:
            try:
                row = await self.db.fetchrow(_FINISH, text, delay, claim, hint_text)
                self.db.ok()
                if row is not None and row["again"]:
                    log.warning(
                        "work_claim_lost",
                        key=text,
                        effect="its lease ran out before the run ended; the key is judged again",
                    )
                    return True
                return bool(row is not None and row["pending"])
            except DB_ERRORS as exc:
                self.db.failed(exc, "finish")
                if not self._accepting:
                    return False
                await asyncio.sleep(wait)
                wait = min(2.0, wait * 2)

    async def _heartbeat(self) -> None:
        """Renew the leases of the runs here; cancel a run whose claim is gone (its lease ran
        out, e.g. PostgreSQL was out of reach for longer: another replica may be running the
        key now), so it does not post what it judged. Runs until `stop` has seen the last
        evaluation here end."""
        while self._beating:
            await asyncio.sleep(min(HEARTBEAT, self.lease / 4))
            if not self._claims:
                continue
            claims = list(self._claims)
            try:
                rows = await self.db.fetch(_HEARTBEAT, self.owner, self.lease, claims)
            except DB_ERRORS:
                continue
            renewed = {int(row["claim"]) for row in rows}
            for claim in claims:
                run = self._claims.get(claim)
                if claim in renewed or run is None or run.lost:
                    continue
                if run.task is None or run.task.done():
                    continue  # finished meanwhile (its finish cleared the claim)
                run.lost = True
                run.task.cancel()
                log.warning(
                    "work_lease_lost",
                    key=run.key,
                    effect="its evaluation is stopped before it posts; the key is judged again",
                )

    async def _dispatch(self) -> None:
        """Wake a worker when a cooling key or a timer comes due (asked by a worker that found
        nothing ready, or by a finish that left work behind), and every POLL; take over the
        keys of expired leases."""
        last_reap = last_clean = 0.0
        wait = 0.0
        # Ends on `_accepting`, not only on cancellation: Python 3.11's wait_for can swallow a
        # cancellation that lands as its wait ends, which once left a stopping replica hanging.
        while self._accepting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._look.wait()
            self._look.clear()
            if not self._accepting:
                return
            now = time.monotonic()
            try:
                if now - last_reap >= REAP_EVERY:
                    last_reap = now
                    for row in await self.db.fetch(_REAP):
                        self.recovered += 1
                        log.warning(
                            "work_recovered",
                            key=row["key"],
                            owner=row["owner"],
                            reason="its replica's lease ran out (killed or cut off)",
                        )
                if now - last_clean >= CLEAN_EVERY:
                    last_clean = now
                    await self.db.execute(_CLEAN, IDLE_ROW_AGE, DEDUPE_TTL)
                look = await self.look()
            except DB_ERRORS as exc:
                self.db.failed(exc, "poll")
                wait = POLL
                continue
            next_in = look.get("next_in")
            wait = POLL if next_in is None else max(0.0, min(POLL, float(next_in)))
            if next_in is not None and float(next_in) <= 0.0:
                if self._idle:
                    self._wake_one()
                    wait = 0.05
                else:  # every worker is busy: each claims again as it finishes
                    wait = POLL

"""The service with DATABASE_URL, built with create_app as `serve` builds it: state in
PostgreSQL, shared by every app on the same database (README "Running more than one")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from bot.keys import MRKey
from bot.service.app import DATABASE, EVALUATOR, LEADER, QUEUE, RECORD, SWEEPER
from bot.service.details import LINK_KEY
from bot.service.pgqueue import PgQueue
from bot.service.pgrecord import PgRecord
from tests.builders import running_pipeline, seed_mr
from tests.conftest import Bot, eventually, get, link, write_policies
from tests.fakegitlab import FakeGitLab
from tests.payloads import merge_request_hook, pipeline_hook, status_check_request

SHA = "1" * 40
CHECKS = ("conventional-title", "pipeline-green")


def _seed(gitlab: FakeGitLab, iid: int = 1, title: str = "feat: x") -> int:
    seed_mr(gitlab, CHECKS, iid=iid, title=title, sha=SHA, head_pipeline=running_pipeline(SHA))
    return iid


def mr_event(iid: int) -> dict[str, Any]:
    return merge_request_hook(iid=iid, sha=SHA)


async def settled(bot: Bot, limit: float = 10.0) -> None:
    queue = bot.app[QUEUE]
    await asyncio.wait_for(queue.join(), limit)


async def test_a_delivery_is_committed_evaluated_and_recorded_in_postgres(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    mr = _seed(gitlab)
    bot = await start_bot(database_url=database_url)
    assert isinstance(bot.app[QUEUE], PgQueue)
    assert isinstance(bot.app[RECORD], PgRecord)
    status, body = await bot.deliver(mr_event(mr), headers={"Idempotency-Key": "d-1"})
    assert (status, body["status"]) == (202, "queued")
    await settled(bot)
    assert gitlab.check_status(1, mr, "conventional-title") == "passed"
    assert gitlab.check_status(1, mr, "pipeline-green") == "failed"
    history = await bot.app[RECORD].history(1, mr)
    assert {row["check"] for row in history} >= {"conventional-title"}
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM bot_deliveries") == 1
        assert await conn.fetchval("SELECT count(*) FROM bot_projects") == 1
    finally:
        await conn.close()


async def test_replicas_share_delivery_ids_link_key_and_one_sweep_leader(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    mr = _seed(gitlab)
    first = await start_bot(database_url=database_url)
    second = await start_bot(database_url=database_url)
    headers = {"Idempotency-Key": "same-delivery"}
    assert (await first.deliver(mr_event(mr), headers=headers))[0] == 202
    status, body = await second.deliver(mr_event(mr), headers=headers)
    assert (status, body) == (200, {"status": "duplicate"})
    assert first.app[LINK_KEY] == second.app[LINK_KEY]
    await eventually(lambda: first.app[LEADER].leading or second.app[LEADER].leading, 5)
    await asyncio.sleep(1.5)  # a standby tries for the lock every second
    assert [first.app[LEADER].leading, second.app[LEADER].leading].count(True) == 1
    await settled(first)


async def test_the_sweep_leader_dies_and_a_standby_takes_over(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """Two replicas, a 2 s interval: one sweeps; stopped, the other sweeps within an interval,
    and the fleet never sweeps more than once per interval meanwhile."""
    _seed(gitlab)
    bots = [
        await start_bot(database_url=database_url, reconcile_interval=2.0, projects=("acme/app",))
        for _ in range(2)
    ]
    leaders = [bot.app[LEADER] for bot in bots]
    await eventually(lambda: any(leader.sweeps for leader in leaders), 5)
    leader = next(n for n, one in enumerate(leaders) if one.sweeps)
    standby = 1 - leader
    assert leaders[standby].sweeps == 0
    await asyncio.sleep(2.5)
    assert leaders[leader].sweeps in (1, 2) and leaders[standby].sweeps == 0
    await bots[leader].stop()
    stopped = asyncio.get_running_loop().time()
    await eventually(lambda: leaders[standby].sweeps >= 1, 5)
    assert asyncio.get_running_loop().time() - stopped < 2.0 + 1.5


async def test_a_postgres_outage_holds_deliveries_and_says_why(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], pg_cluster: Any, database_url: str
) -> None:
    """PostgreSQL stops: the bot does not crash, /readyz says why (degraded, still 200: an
    unready replica would get no deliveries at all), a delivery is answered 202 and held; when
    PostgreSQL is back the held delivery is evaluated and its verdict posted and recorded."""
    mr = _seed(gitlab, title="wip")
    bot = await start_bot(database_url=database_url)
    pg_cluster.stop()
    try:
        status, body = await bot.deliver(mr_event(mr), headers={"Idempotency-Key": "held-1"})
        assert (status, body.get("held")) == (202, True)
        async with bot.session.get(f"{bot.url}/readyz") as resp:
            ready = await resp.json()
        assert resp.status == 200
        assert ready["status"] == "degraded"
        assert any("PostgreSQL is unreachable" in w for w in ready["warnings"])
        await asyncio.sleep(1.0)
        assert gitlab.status_posts() == []
    finally:
        pg_cluster.start()
    await eventually(lambda: gitlab.check_status(1, mr, "conventional-title") == "failed", 15)
    await eventually(lambda: bot.app[DATABASE].problem() is None, 10)
    history = await bot.app[RECORD].history(1, mr)
    assert {row["check"] for row in history} >= {"conventional-title"}


async def two_replicas_mid_sweep(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str, list_seconds: float
) -> tuple[list[Bot], list[Any], int]:
    """Two replicas sweeping acme/app every 60 s, half a second into the leader's first sweep,
    whose MR list GitLab answers in `list_seconds`: the bots, their leaders, the leading one."""
    _seed(gitlab)
    gitlab.delay(list_seconds, times=1, path_contains="/projects/acme%2Fapp/merge_requests")
    bots = [
        await start_bot(database_url=database_url, reconcile_interval=60.0, projects=("acme/app",))
        for _ in range(2)
    ]
    leaders = [bot.app[LEADER] for bot in bots]
    await eventually(lambda: any(leader.leading for leader in leaders), 5)
    leader = next(n for n, one in enumerate(leaders) if one.leading)
    await asyncio.sleep(0.5)  # mid-sweep
    return bots, leaders, leader


async def test_a_sweep_cut_short_by_its_leaders_death_is_run_again_at_once(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """The leader stops mid-sweep (GitLab's MR list is slow); the standby sweeps within a few
    seconds, not a whole RECONCILE_INTERVAL (60 s) later."""
    bots, leaders, leader = await two_replicas_mid_sweep(gitlab, start_bot, database_url, 2.0)
    standby = 1 - leader
    assert leaders[leader].sweeps == 0
    await bots[leader].stop()
    stopped = asyncio.get_running_loop().time()
    await eventually(lambda: leaders[standby].sweeps >= 1, 10)
    assert asyncio.get_running_loop().time() - stopped < 5


async def test_a_delivery_is_answered_only_once_its_key_is_committed(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """While another session holds the work table locked, the delivery's commit cannot happen,
    so neither may its 202; the answer comes once the lock goes, with the key in the table."""
    mr = _seed(gitlab)
    bot = await start_bot(database_url=database_url)
    conn = await asyncpg.connect(database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE bot_work IN EXCLUSIVE MODE")
        answer = asyncio.create_task(bot.deliver(mr_event(mr), headers={"Idempotency-Key": "c"}))
        await asyncio.sleep(0.5)
        assert not answer.done(), "answered before the delivery was committed"
        await tx.rollback()
        status, body = await asyncio.wait_for(answer, 5)
        assert (status, body["status"]) == (202, "queued")
        assert await conn.fetchval("SELECT count(*) FROM bot_deliveries") == 1
    finally:
        await conn.close()
    await settled(bot)


async def test_a_branch_pipeline_reaches_its_mr_through_the_shared_queue(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """A branch key is resolved to its MRs, which are queued in PostgreSQL before the branch's
    row is finished, and judged."""
    mr = _seed(gitlab)
    gitlab.set_pipeline(1, mr, "success")
    bot = await start_bot(database_url=database_url)
    hook = pipeline_hook(iid=None, ref="feature", status="success")
    status, body = await bot.deliver(hook, event="Pipeline Hook")
    assert (status, body["queued"]) == (202, ["1:feature"])
    await eventually(lambda: gitlab.check_status(1, mr, "pipeline-green") == "passed", 10)


async def test_a_details_link_from_one_replica_opens_on_another_with_the_shared_record(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    mr = _seed(gitlab)
    first = await start_bot(database_url=database_url)
    second = await start_bot(database_url=database_url)
    assert (await first.deliver(mr_event(mr)))[0] == 202
    await settled(first)
    signed = link(first, 1, mr, json=True).replace(first.url, second.url)
    status, view, _ = await get(second, signed)
    assert status == 200, view
    checks = {c["check"]: c for c in view["checks"]}
    assert checks["conventional-title"]["verdict"]["verdict"] == "passed"
    assert sorted(h["check"] for h in view["history"]) == list(CHECKS)


async def test_a_push_reaches_every_replicas_repository_policies(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str, tmp_path: Path
) -> None:
    """Repository policies are cached per process. A Push Hook to a target branch is taken by
    one replica, but every replica must forget that branch's head (a NOTIFY), and the push
    must stay a push through the shared queue: the MRs targeting the branch are judged again
    under the new policies, whichever replica judges them."""
    folder = ".gitlab/status-checks"
    seed_mr(gitlab, ["reviewed"], labels=["team"], sha=SHA)
    before = gitlab.commit_files(
        1, "main", {f"{folder}/r.yml": "check: reviewed\nrequire:\n  - labels: {any: [team]}\n"}
    )
    central = write_policies(
        tmp_path / "central", {"t.yml": "check: other\nrequire: [{draft: false}]\n"}
    )
    bots = [await start_bot(database_url=database_url, policy_dir=central) for _ in range(2)]
    for bot in bots:  # both replicas have judged by main's policies
        await bot.app[EVALUATOR].repository.for_target(1, "main")
    assert (await bots[0].deliver(mr_event(1)))[0] == 202
    await eventually(lambda: gitlab.check_status(1, 1, "reviewed") == "passed", 10)

    after = gitlab.commit_files(
        1, "main", {f"{folder}/r.yml": "check: reviewed\nrequire:\n  - labels: {any: [ok]}\n"}
    )
    push = gitlab.push_hook(1, "main", before, after)
    assert (await bots[0].deliver(push, event="Push Hook"))[0] == 202
    await eventually(lambda: gitlab.check_status(1, 1, "reviewed") == "failed", 10)
    for bot in bots:
        await eventually(
            lambda bot=bot: (
                bot.app[EVALUATOR].repository.known_layer(1, "main") is None
                or bot.app[EVALUATOR].repository.remembered_head(1, "main") == after
            ),
            5,
        )


async def test_in_a_fleet_gitlab_trouble_leaves_every_replica_ready_and_says_so(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """Every replica shares one GitLab: a readiness that followed GitLab would take them all out
    of the Service together, and deliveries (GitLab does not resend them) would be refused while
    the shared queue could have kept them. So with DATABASE_URL GitLab trouble is `degraded`
    (200, named), and the delivery taken meanwhile is judged once GitLab answers."""
    gitlab.fail(503, times=10_000, retry_after=0)
    bot = await start_bot(database_url=database_url)
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        body = await resp.json()
    assert (resp.status, body["status"]) == (200, "degraded")
    assert any("GitLab is unreachable" in warning for warning in body["warnings"])
    mr = _seed(gitlab)
    assert (await bot.deliver(mr_event(mr)))[0] == 202
    gitlab.clear_faults()
    await eventually(lambda: gitlab.check_status(1, mr, "conventional-title") == "passed", 15)


async def _answered_without_holding_then_a_normal_delivery_is_committed(
    bot: Bot, gitlab: FakeGitLab, database_url: str, status: int, body: Any
) -> None:
    """What follows an awkward delivery: it was not held (it was stored, or refused with a 400),
    PostgreSQL is not said to be unreachable, and the next ordinary delivery is committed at once
    (its row is in bot_work when it is answered) and evaluated."""
    assert status in (202, 400), (status, body)
    assert not (isinstance(body, dict) and body.get("held")), body
    good = _seed(gitlab, iid=2)
    status, body = await bot.deliver(mr_event(good), headers={"Idempotency-Key": "good-1"})
    assert (status, body["status"], body.get("held")) == (202, "queued", None), body
    conn = await asyncpg.connect(database_url)
    try:
        keys = [r["key"] for r in await conn.fetch("SELECT key FROM bot_work")]
    finally:
        await conn.close()
    assert '["mr", 1, 2]' in keys, keys
    await eventually(lambda: gitlab.check_status(1, good, "conventional-title") == "passed", 10)
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        ready = await resp.json()
    assert not any("unreachable" in w for w in ready.get("warnings", [])), ready
    assert bot.app[DATABASE].problem() is None


async def test_a_nul_in_a_status_check_request_neither_holds_nor_blocks_later_deliveries(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """jsonb cannot hold \\u0000: a hint carrying one was taken for "PostgreSQL unreachable",
    held and retried forever, and every later delivery of the replica was held behind it."""
    mr = _seed(gitlab)
    bot = await start_bot(database_url=database_url)
    request = status_check_request(iid=mr, sha=SHA)
    request["object_attributes"]["source_branch"] = "x\u0000y"
    status, body = await bot.deliver(request, event=None)
    await _answered_without_holding_then_a_normal_delivery_is_committed(
        bot, gitlab, database_url, status, body
    )


async def test_a_pipeline_ref_of_1024_cjk_characters_neither_holds_nor_blocks_later_deliveries(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """MAX_REF_CHARS allows it; as escaped JSON its key was 6 KB, over the btree row limit of
    the primary key: the insert failed the same way on every retry."""
    _seed(gitlab)
    bot = await start_bot(database_url=database_url)
    # Varied characters: a repeated one compresses under the limit.
    ref = "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(1024))
    status, body = await bot.deliver(pipeline_hook(iid=None, ref=ref), event="Pipeline Hook")
    assert (status, body.get("queued")) == (202, [f"1:{ref}"]), body
    await _answered_without_holding_then_a_normal_delivery_is_committed(
        bot, gitlab, database_url, status, body
    )


async def test_a_delivery_postgres_cannot_store_is_a_400_and_not_held(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """Should a delivery still carry a value PostgreSQL refuses, the sender is told so (a 400
    that names the problem), nothing is held, and the replica goes on committing deliveries."""
    mr = _seed(gitlab)
    bot = await start_bot(database_url=database_url)
    codec = bot.app[QUEUE].codec
    codec.hint = lambda hint: '"\\u0000"'  # what jsonb refuses, whatever the delivery said
    status, body = await bot.deliver(mr_event(mr), headers={"Idempotency-Key": "bad-1"})
    del codec.hint
    assert status == 400, body
    assert "cannot store" in body["error"]
    await _answered_without_holding_then_a_normal_delivery_is_committed(
        bot, gitlab, database_url, status, body
    )


async def test_replicas_taking_turns_on_one_mr_see_no_tampering(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """The title flips and the two replicas judge the MR in turn: each verdict GitLab shows was
    posted by the other replica, as the shared record says, so none is taken for tampering
    (each replica's own memory of its posts used to be consulted first: a false `tamper`)."""
    mr = _seed(gitlab)
    bots = [await start_bot(database_url=database_url) for _ in range(2)]
    seen: list[tuple[int, str, str, bool]] = []
    for n, bot in enumerate(bots):
        bot.app[EVALUATOR].listeners.append(
            lambda d, n=n: seen.append((n, d.check, d.action, d.tampered))
        )
    for turn, title in enumerate(["feat: x", "wip", "feat: y", "wip", "feat: z"]):
        gitlab.update_mr(1, mr, title=title)
        bot = bots[turn % 2]
        await bot.app[EVALUATOR].evaluate(MRKey(1, mr))
        await bot.app[RECORD].flush()
        expected = "passed" if title.startswith("feat") else "failed"
        assert gitlab.check_status(1, mr, "conventional-title") == expected
    posted = [s for s in seen if s[1] == "conventional-title" and s[2] == "posted"]
    assert len(posted) == 5, seen
    assert [s for s in seen if s[3]] == []


async def test_a_leader_that_loses_its_lease_mid_sweep_stops_it_and_the_fleet_sweeps_again(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], database_url: str
) -> None:
    """As if the leader stalled and another replica took its lease: its next renewal finds
    another holder, it cancels its sweep (which never finishes, though GitLab answers later)
    and stands by; once that lease runs out the fleet sweeps at once, the last sweep having
    never finished."""
    bots, leaders, leader = await two_replicas_mid_sweep(gitlab, start_bot, database_url, 3.0)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE bot_leaders SET leader = 'elsewhere', "
            "lease_until = clock_timestamp() + interval '4 seconds' WHERE name = 'sweep'"
        )
    finally:
        await conn.close()
    await eventually(lambda: not leaders[leader].leading, 3)
    await asyncio.sleep(3.0)  # the cut sweep's list has answered by now
    assert [bot.app[SWEEPER].sweeps for bot in bots] == [0, 0]
    assert not any(one.leading for one in leaders)
    await eventually(lambda: sum(bot.app[SWEEPER].sweeps for bot in bots) >= 1, 4)

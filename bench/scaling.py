"""The "Scaling past one machine" section, worked out from this run's numbers."""

from __future__ import annotations

from typing import Any

GITLAB_COM_API_LIMIT = 2000  # authenticated API requests per minute per user on GitLab.com
RECONCILE_INTERVAL = 300.0  # the default, seconds


def section(facts: dict[str, Any]) -> str:
    cpu = facts.get("bot_cpu_per_decision")
    requests = facts.get("requests_per_decision") or 5.0
    rps = facts.get("intake_rps_bot")
    per_mr = facts.get("rss_per_queued_mr")
    idle = facts.get("rss_idle")
    sweep = facts.get("sweep") or []
    decisions_per_s = 1 / cpu if cpu else None
    limit_decisions = GITLAB_COM_API_LIMIT / requests  # per minute
    lines = ["### Scaling past one machine", ""]
    lines.append("What limits one instance, with this run's numbers:")
    lines.append("")
    lines.append(
        f"- **GitLab's rate limit comes first.** A decision costs {requests:.0f} requests. "
        f"GitLab.com allows {GITLAB_COM_API_LIMIT:,} authenticated API requests per minute per "
        f"user, i.e. {limit_decisions:,.0f} decisions/min ({limit_decisions / 60:.1f}/s) for the "
        "bot's token, whatever the number of instances: shards that share one token share that "
        "limit. Self-managed GitLab has the limit off by default (the admin sets it)."
    )
    if decisions_per_s:
        lines.append(
            f"- **CPU per evaluation**: {cpu * 1000:.2f} ms of bot CPU per complete decision, "
            f"≈{decisions_per_s:,.0f} decisions/s on one core — "
            f"{decisions_per_s / (limit_decisions / 60):,.0f}x what one token may ask of "
            "GitLab.com. The event loop is single-threaded: one process uses one core."
        )
    if rps:
        lines.append(
            f"- **Intake**: {rps:,.0f} deliveries/s acknowledged while evaluating (one process). "
            "GitLab sends a handful of deliveries per MR change, so intake is not the limit."
        )
    if per_mr and idle:
        lines.append(
            f"- **Memory**: {idle / 2**20:.0f} MiB idle + {per_mr:,.0f} bytes per queued MR: "
            f"a backlog of 100,000 MRs would fit in "
            f"{(idle + per_mr * 100_000) / 2**20:,.0f} MiB."
        )
    if sweep:
        big = sweep[-1]
        per = big["requests"] / big["size"]
        mrs_per_interval = GITLAB_COM_API_LIMIT * RECONCILE_INTERVAL / 60 / per
        lines.append(
            f"- **The sweep**: {per:.2f} requests per open MR; within GitLab.com's limit one "
            f"token sweeps at most {mrs_per_interval:,.0f} open MRs per default "
            f"{RECONCILE_INTERVAL:.0f} s interval (and then has no budget left for webhooks): "
            "past a few thousand open MRs the interval must grow or the sweep must skip MRs "
            "whose head SHA and status have not changed since the last decision."
        )
    lines += [
        "",
        "What would be shared, and how to shard:",
        "",
        "- **Two things would have to be shared** if any instance could receive any delivery: "
        "the **per-MR coalescing queue** (otherwise a burst for one MR is evaluated once per "
        "instance, and two instances can post for the same MR at once: it would need a shared "
        "set of queued keys with a lease per running key, e.g. in Redis or PostgreSQL) and the "
        "**decision record** (one database instead of SQLite per `STATE_DIR`, for `history`, "
        "the details page and the sweep's remembered projects). Both are keyed by project and "
        "MR, so sharding by project removes the need to share either.",
        "- **Shard by project id** (every MR belongs to one project) with a consistent hash at "
        "the load balancer, so all deliveries for one MR reach the same instance. GitLab's "
        "deliveries carry the project id only in the body, so give each project's webhook and "
        "status checks a URL the balancer can hash on, e.g. `/webhook?project=123` (the bot "
        "routes on the path, so it accepts such URLs as they are; `register` would have to "
        "write one per project), or run one instance per group and point that group's hooks at "
        "it. Adding a shard moves only 1/N of the projects; their next delivery (or the new "
        "shard's sweep, once they are in its `PROJECTS`) picks them up, and the old shard's "
        "record keeps their history.",
        "- **The sweep is partitioned the same way**: each instance sweeps only the projects "
        "that hash to it (its own `PROJECTS`), so no MR is swept twice.",
        "- **Before a second machine, a second process**: one process uses one core, and "
        "evaluations take intake's CPU (see the intake rows); splitting intake and evaluation "
        "into two processes on the same machine is the cheaper first step (what it would take "
        "and cost: the intake throughput section under *What limits it* below).",
        "- **Separate tokens per shard** (one bot user each) multiply GitLab's per-user rate "
        "limit; on a self-managed GitLab the instance's own capacity is then the limit.",
    ]
    return "\n".join(lines)

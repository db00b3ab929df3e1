"""Settings from the environment (docs/architecture.md#settings), validated once, then frozen.

A bad setting must stop the bot before it accepts traffic, with one line that says what to fix.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlparse


class ConfigError(Exception):
    """A setting is missing or invalid; the message is the one line the operator sees."""


@dataclass(frozen=True)
class Settings:
    gitlab_url: str
    gitlab_token: str
    webhook_secret: str | None = None
    status_check_secret: str | None = None
    policy_dir: Path = Path("policies")
    host: str = "0.0.0.0"
    port: int = 8080
    log_format: str = "json"
    log_level: str = "info"
    projects: tuple[str, ...] = ()
    reconcile_interval: float = 300.0
    state_dir: Path = Path("state")
    workers: int = 8
    max_body_bytes: int = 10 * 1024 * 1024
    gitlab_timeout: float = 10.0
    gitlab_concurrency: int = 16
    shutdown_deadline: float = 20.0
    policy_poll_interval: float = 5.0
    handle_signals: bool = True
    public_url: str | None = None
    link_secret: str | None = None
    link_ttl: float = 7 * 24 * 3600.0
    sweep_budget: float = 5.0
    gitlab_rate_limit: float = 0.0  # requests per second for all GitLab calls; 0: no limit
    evaluation_spacing: float = 0.5
    record_retention_days: float = 90.0
    approval_settle_seconds: float = 30.0
    # PostgreSQL for a fleet (docs/queue.md); None: the embedded SQLite in STATE_DIR, one process.
    database_url: str | None = None
    # Seconds between SIGTERM and closing the listener, during which /readyz says "draining"
    # (503) while deliveries are still served: a load balancer stops sending first.
    drain_delay: float = 0.0
    # Policies kept in projects' repositories (docs/architecture.md#repository-policies).
    repository_policies: bool = True
    repository_policy_ttl: float = 300.0

    def __repr__(self) -> str:
        # Never let a token reach a log line or a traceback through repr().
        return (
            f"Settings(gitlab_url={self.gitlab_url!r}, policy_dir={str(self.policy_dir)!r}, "
            f"host={self.host!r}, port={self.port}, workers={self.workers}, "
            f"database={'postgresql' if self.database_url else 'sqlite'})"
        )


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _read_token(env: Mapping[str, str]) -> str:
    token = env.get("GITLAB_TOKEN", "").strip()
    token_file = env.get("GITLAB_TOKEN_FILE", "").strip()
    if token:
        return token
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"GITLAB_TOKEN_FILE {token_file!r} cannot be read: {exc.strerror or exc}"
            ) from None
        if not token:
            raise ConfigError(f"GITLAB_TOKEN_FILE {token_file!r} is empty")
        return token
    raise ConfigError(
        "GITLAB_TOKEN (or GITLAB_TOKEN_FILE) is not set: "
        "create a token with the `api` scope and Developer role on the projects"
    )


def _masked(url: str) -> str:
    """The URL as an error message may show it: any user:password@ replaced by `***@`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&]*")


def masked_url(url: str) -> str:
    """A database URL as logs and messages may show it: everything between `://` and the last
    `@` (user and password, whatever characters the password holds) replaced by `***`, and the
    value of any `password=` parameter by `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest = _QUERY_PASSWORD.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"


def _checked_url(name: str, url: str) -> str:
    """An http(s) URL without credentials. A user name or password in it is refused rather
    than supported: GitLab's API authenticates with GITLAB_TOKEN only (aiohttp refuses to send
    both, so every request would fail), and a URL is logged and shown (PUBLIC_URL goes into MR
    notes), so a password in it would end up in logs and notes."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} {_masked(url)!r} is not an http(s) URL")
    if "@" in parsed.netloc:
        raise ConfigError(
            f"{name} must not contain a user name or password (it is {_masked(url)!r}): "
            + (
                "GitLab's API is authenticated by GITLAB_TOKEN alone"
                if name == "GITLAB_URL"
                else "it is shown in logs and MR notes"
            )
        )
    return url


def _gitlab_url(env: Mapping[str, str]) -> str:
    url = env.get("GITLAB_URL", "").strip().rstrip("/")
    if not url:
        raise ConfigError(
            "GITLAB_URL is not set: give the base URL, e.g. https://gitlab.example.com"
        )
    return _checked_url("GITLAB_URL", url)


def _public_url(env: Mapping[str, str]) -> str | None:
    url = env.get("PUBLIC_URL", "").strip().rstrip("/")
    if not url:
        return None
    return _checked_url("PUBLIC_URL", url)


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def database_passwords(url: str | None) -> list[str]:
    """Every password DATABASE_URL holds (in its user part, or libpq's `password=` parameter),
    as written and percent-decoded: logs mask them like the other secrets. Read without a URL
    parser, so an unencoded `/`, `#`, `?` or `@` in a password cannot hide it."""
    if not url:
        return []
    found: list[str] = []
    rest = url.partition("://")[2]
    if "@" in rest:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.partition(":")[2])
    query = rest.partition("?")[2]
    found += [
        value for name, value in parse_qsl(query, keep_blank_values=False) if name == "password"
    ]
    found += [match.group(0)[len("password=") :] for match in _QUERY_PASSWORD.finditer(query)]
    found += [unquote(p) for p in found]
    return [p for p in dict.fromkeys(found) if p]


def database_password(url: str | None) -> str | None:
    """The password in DATABASE_URL, if any (the user part's, else the `password=` parameter's)."""
    passwords = database_passwords(url)
    return passwords[0] if passwords else None


def _database_url(env: Mapping[str, str]) -> str | None:
    """DATABASE_URL: a postgresql:// (or postgres://) URL, as libpq and asyncpg read it."""
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"DATABASE_URL {masked_url(url)!r} is not a postgresql:// URL "
            "(e.g. postgresql://bot:secret@db.example.com:5432/statusbot)"
        )
    # urllib's message may quote the password (a `/`, `#` or `?` in it ends the host part
    # early, and the rest is read as a port): it is never shown.
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
        valid = bool(parsed.hostname) or parsed.netloc == ""
        # An `@` past the host part: the user part was cut short (a `/` or `#` in a password).
        # asyncpg splits the user part at the first `@`, urllib at the last: encode the others.
        valid = valid and "@" not in parsed.path + parsed.fragment and parsed.netloc.count("@") < 2
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(
            f"DATABASE_URL {masked_url(url)!r} is not a valid URL: its host or port cannot be "
            "read (percent-encode any `/`, `#`, `?`, `@` or `:` in the user name or password, "
            "e.g. `/` as %2F)"
        )
    return url


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def default_log_format() -> str:
    return "console" if sys.stderr.isatty() else "json"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError with one line on the first problem."""
    env = os.environ if env is None else env
    gitlab_url = _gitlab_url(env)
    token = _read_token(env)
    projects = tuple(p.strip() for p in env.get("PROJECTS", "").split(",") if p.strip())
    return Settings(
        gitlab_url=gitlab_url,
        gitlab_token=token,
        webhook_secret=env.get("WEBHOOK_SECRET") or None,
        status_check_secret=env.get("STATUS_CHECK_SECRET") or None,
        policy_dir=Path(env.get("POLICY_DIR", "").strip() or "policies"),
        host=env.get("HOST", "").strip() or "0.0.0.0",
        port=int(_number(env, "PORT", 8080, minimum=0)),
        log_format=_choice(env, "LOG_FORMAT", default_log_format(), ("json", "console")),
        log_level=_choice(env, "LOG_LEVEL", "info", _LOG_LEVELS),
        projects=projects,
        reconcile_interval=_number(env, "RECONCILE_INTERVAL", 300, minimum=1),
        state_dir=Path(env.get("STATE_DIR", "").strip() or "state"),
        workers=int(_number(env, "WORKERS", 8, minimum=1)),
        max_body_bytes=int(_number(env, "MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)),
        gitlab_timeout=_number(env, "GITLAB_TIMEOUT", 10, minimum=0.1),
        gitlab_concurrency=int(_number(env, "GITLAB_CONCURRENCY", 16, minimum=1)),
        shutdown_deadline=_number(env, "SHUTDOWN_DEADLINE", 20, minimum=0),
        policy_poll_interval=_number(env, "POLICY_POLL_INTERVAL", 5, minimum=0.1),
        public_url=_public_url(env),
        link_secret=env.get("LINK_SECRET") or None,
        link_ttl=_number(env, "LINK_TTL", 7 * 24 * 3600, minimum=60),
        sweep_budget=_number(env, "SWEEP_BUDGET", 5, minimum=0.1),
        gitlab_rate_limit=_number(env, "GITLAB_RATE_LIMIT", 0, minimum=0),
        evaluation_spacing=_number(env, "EVALUATION_SPACING", 0.5, minimum=0),
        record_retention_days=_number(env, "RECORD_RETENTION_DAYS", 90, minimum=1),
        # GitLab deletes approvals 10 s after it records a push; below that is never safe.
        approval_settle_seconds=_number(env, "APPROVAL_SETTLE_SECONDS", 30, minimum=10),
        database_url=_database_url(env),
        drain_delay=_number(env, "DRAIN_DELAY", 0, minimum=0),
        repository_policies=_choice(env, "REPOSITORY_POLICIES", "on", ("on", "off")) == "on",
        repository_policy_ttl=_number(env, "REPOSITORY_POLICY_TTL", 300, minimum=1),
    )

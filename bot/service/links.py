"""Signed, expiring links to the details page: the bot hands them out, nobody can forge them.

A link is `/mr/{project_id}/{iid}?expires=UNIX&sig=HEX` where `sig` is an HMAC-SHA256 over the
path and expiry with the server's link key. The key is `LINK_SECRET` when set, else a random key
kept in `STATE_DIR/link.key` so links survive restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode


def load_link_key(secret: str | None, state_dir: Path) -> bytes:
    """The HMAC key: the configured secret, or one generated once and kept in the state dir."""
    if secret:
        return secret.encode()
    path = state_dir / "link.key"
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(key.hex(), encoding="ascii")
    path.chmod(0o600)
    return key


def _signature(key: bytes, path: str, expires: int) -> str:
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def details_path(project_id: int, iid: int, *, json: bool = False) -> str:
    return f"/mr/{project_id}/{iid}{'.json' if json else ''}"


def signed_link(
    key: bytes,
    project_id: int,
    iid: int,
    *,
    ttl: float,
    base_url: str = "",
    now: float | None = None,
) -> str:
    """An absolute (with `base_url`) or relative link to the MR's details page, valid for `ttl`."""
    path = details_path(project_id, iid)
    expires = int((time.time() if now is None else now) + ttl)
    query = urlencode({"expires": expires, "sig": _signature(key, path, expires)})
    return f"{base_url.rstrip('/')}{path}?{query}"


def verify(
    key: bytes, path: str, expires: str | None, sig: str | None, *, now: float | None = None
) -> bool:
    """True when `sig` signs `path` (the page path; `.json` is signed like the HTML page) and
    `expires` is still in the future."""
    if not expires or not sig:
        return False
    try:
        deadline = int(expires)
    except ValueError:
        return False
    if deadline < (time.time() if now is None else now):
        return False
    page = path.removesuffix(".json")
    return hmac.compare_digest(_signature(key, page, deadline), sig)

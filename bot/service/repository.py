"""The policies projects keep in their repositories, read from GitLab once per commit.

An MR is judged by the policies of its **target** branch
(docs/architecture.md#repository-policies), never its source branch: an MR cannot change the
rules it is judged by. What the bot reads, and when:

- the branch's head SHA (`GET .../repository/branches/:branch`), remembered per (project,
  branch) until a Push Hook for that branch says it moved, or for at most `ttl` seconds (a safety
  net for a lost Push Hook: the policies of the branch are then at most `ttl` old);
- the folder at that SHA (`GET .../repository/tree`), once per SHA; a folder that is not there is
  remembered too, so a project without repository policies costs nothing more;
- each file's bytes (`GET .../repository/files/:path/raw`), once per blob id: a push that changes
  one file reads that file only. At most one byte more than a file may hold is read
  (MAX_POLICY_BYTES, MAX_TEST_BYTES): a larger file is reported too large by the loader at
  `file:1`, and costs that much memory, not its size.

Only policy and test files are counted and kept: more than MAX_FILES of them at a commit is the
repository's problem, not GitLab's. It is remembered per commit like any folder (the tree is not
read past the page that tells), and every check the repository may define fails with
`.gitlab/status-checks:1: N policy and test files, at most 100` until a push removes some.

So an evaluation whose target branch did not move makes no request here. When GitLab fails, the
checks the repository may define are failed, undecided, and the bot looks again by itself; the
central checks go on (bot/policy/layers.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.gitlab.client import GitLab, GitLabError
from bot.logs import get_logger
from bot.policy.facts import MergeRequestFacts
from bot.policy.layers import (
    FOLDER,
    MAX_FILES,
    BrokenFile,
    Layer,
    LayerRule,
    RepositoryLayer,
    central_label,
    compile_layer,
    is_repository_policy,
    is_repository_test,
    layered,
    repository_label,
    short,
    stacked,
)
from bot.policy.model import Outcome, PolicyProblem, PolicySet
from bot.policy.nodes import MAX_POLICY_BYTES, MAX_TEST_BYTES

log = get_logger(__name__)

DEFAULT_TTL = 300.0  # seconds a branch head is trusted without a Push Hook (RECONCILE_INTERVAL)
RETRY_BASE = 5.0  # seconds before reading again after a transient failure (doubling)
MAX_RETRY = 300.0
MEMORY = 10_000  # branch heads, layers and blobs remembered (oldest forgotten first)

T = TypeVar("T")


@dataclass(frozen=True)
class Crowded:
    """A folder holding more policy and test files than are read, at commit `sha`."""

    sha: str
    count: int
    complete: bool  # every page of the tree read; else `count` is what the pages read held

    @property
    def problem(self) -> PolicyProblem:
        count = str(self.count) if self.complete else f"at least {self.count}"
        return PolicyProblem(FOLDER, 1, f"{count} policy and test files, at most {MAX_FILES}")


class TooManyFiles(Exception):
    """The folder at a commit holds more policy and test files than are read (Crowded)."""

    def __init__(self, crowded: Crowded) -> None:
        super().__init__(str(crowded.problem))
        self.crowded = crowded


@dataclass
class TooMany(BrokenFile):
    """A folder with too many files: every check it may define fails, as the repository's
    problem (no waiting: only a push changes it)."""

    fix: str = ""

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        shown = "; ".join(str(problem) for problem in self.problems)
        return Outcome(
            rule=self.name,
            passed=False,
            evidence=f"{self.name}: the repository policies are not read: {shown}",
            fix=self.fix,
        )


def crowded_set(
    central: PolicySet, crowded: Crowded, branch: str, checks: Iterable[str]
) -> PolicySet:
    """The policies deciding `checks` when `branch`'s folder holds too many files: each fails
    (over its central floor, still judged, as with unreadable policies: layers.layered)."""
    label = repository_label(f"{FOLDER}@{short(crowded.sha)}")
    fix = (
        f"remove policy or test files from {FOLDER}/ of `{branch}` (by merge request): "
        f"at most {MAX_FILES} are read"
    )
    by_check = dict(central.by_check)
    for check in sorted(set(checks)):
        floor = central.get(check)
        layers: list[Layer] = []
        if floor is not None and not floor.replaceable:
            layers.append(LayerRule(central_label(floor), floor))
        layers.append(TooMany(label, (crowded.problem,), fix=fix))
        by_check[check] = stacked(check, layers, floor)
    salt = f"crowded:{crowded.sha}:{crowded.count}"
    digest = hashlib.sha256(f"{central.digest}\0{salt}".encode()).hexdigest()
    return PolicySet(policies=tuple(by_check.values()), digest=digest, by_check=by_check)


@dataclass(frozen=True)
class Resolved:
    """What the target branch holds: its layer, or why it could not be read (`problem`, GitLab
    failed), or that it holds too many files (`crowded`)."""

    branch: str
    layer: RepositoryLayer | None = None
    problem: str | None = None
    retry_in: float | None = None
    last_known: frozenset[str] = frozenset()
    crowded: Crowded | None = None

    def apply(self, central: PolicySet, listed: Iterable[str], now: dt.datetime) -> PolicySet:
        """The policies deciding the listed checks on this branch (layers.layered)."""
        if self.crowded is not None:
            return crowded_set(central, self.crowded, self.branch, {*listed, *self.last_known})
        if self.problem is not None:
            retry_at = now + dt.timedelta(seconds=self.retry_in or RETRY_BASE)
            return layered(
                central,
                None,
                unreadable=self.problem,
                retry_at=retry_at,
                last_known=self.last_known,
                listed=listed,
            )
        if self.layer is None or not self.layer.checks:
            return central
        paths = tuple(policy.path for policy in central.policies)
        slot = (central.digest, paths, self.layer.sha, self.layer.digest)
        known = _LAYERED.get(slot)
        if known is None:
            known = layered(central, self.layer)
            _LAYERED.remember(slot, known)
        return known


def _wanted(entry: Any) -> bool:
    """A tree entry that is a policy or test file of the folder (others are neither counted
    nor kept)."""
    if not isinstance(entry, dict) or entry.get("type") != "blob" or not entry.get("path"):
        return False
    path = str(entry["path"])
    return is_repository_policy(path) or is_repository_test(path)


class _Memory(OrderedDict[Any, Any]):
    """A bounded mapping: the oldest entry goes when it is full."""

    def __init__(self, size: int = MEMORY) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: Any, value: Any) -> None:
        self.pop(key, None)
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)


# Decided sets by (central digest and paths, commit, folder digest): built once, not per
# evaluation.
_LAYERED = _Memory(256)


class RepositoryPolicies:
    """Reads and remembers the repository policies of target branches (see the module)."""

    def __init__(
        self,
        gitlab: GitLab,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gitlab = gitlab
        self.ttl = ttl
        self.clock = clock
        self.retry_base = RETRY_BASE  # seconds before reading again after a failure (doubling)
        self._heads = _Memory()  # (project, branch) -> (sha, read at)
        self._layers = _Memory()  # (project, sha) -> RepositoryLayer
        self._files = _Memory()  # (project, sha) -> ((path, blob id), ...) or Crowded
        self._blobs = _Memory()  # (project, blob id, cap) -> at most cap + 1 bytes
        self._known = _Memory()  # (project, branch) -> checks of the last layer read there
        self._failures = _Memory()  # (project, branch) -> consecutive failures
        self._running: dict[Any, asyncio.Future[Any]] = {}

    # -- what evaluations call ------------------------------------------------------------------

    async def for_target(self, project: int, branch: str) -> Resolved:
        """The layer of `branch`'s head; never raises for GitLab's failures (see Resolved)."""
        slot = (project, branch)
        last_known = self._known.get(slot, frozenset())
        try:
            sha = await self.head(project, branch)
            layer = await self.layer_at(project, sha)
        except TooManyFiles as exc:  # the repository's problem, remembered for this commit
            self._failures.pop(slot, None)
            return Resolved(branch, crowded=exc.crowded, last_known=last_known)
        except GitLabError as exc:
            failures = self._failures.get(slot, 0) + 1
            self._failures.remember(slot, failures)
            retry = min(MAX_RETRY, self.retry_base * 2 ** (failures - 1))
            if not exc.transient:
                retry = max(retry, min(self.ttl, MAX_RETRY))
            problem = f"reading `{branch}`: {exc.advice()}"
            log.warning(
                "repository_policies_unreadable",
                project=project,
                branch=branch,
                error=exc.advice(),
                retry_in=retry,
            )
            self._heads.pop(slot, None)
            return Resolved(branch, problem=problem, retry_in=retry, last_known=last_known)
        self._failures.pop(slot, None)
        self._known.remember(slot, layer.checks)
        return Resolved(branch, layer=layer, last_known=layer.checks)

    def has_read(self, project: int, branch: str) -> bool:
        """Whether this process judged anything by `branch`'s policies (a push to a branch no
        MR it judged targets, a source branch, costs nothing)."""
        slot = (project, branch)
        return slot in self._known or slot in self._heads

    def forget_branch(self, project: int, branch: str) -> None:
        """A Push Hook says `branch` moved: read its head again next time."""
        self._heads.pop((project, branch), None)

    def forget_heads(self) -> None:
        """Every branch's head: a replica whose listener reconnected may have missed pushes."""
        self._heads.clear()

    def remembered_head(self, project: int, branch: str) -> str | None:
        head = self._heads.get((project, branch))
        return str(head[0]) if head else None

    def known_layer(self, project: int, branch: str) -> RepositoryLayer | None:
        """The layer last read for `branch`'s head, if it is still remembered."""
        head = self._heads.get((project, branch))
        return self._layers.get((project, head[0])) if head else None

    # -- reads, each once -----------------------------------------------------------------------

    async def head(self, project: int, branch: str) -> str:
        slot = (project, branch)
        known = self._heads.get(slot)
        if known is not None and self.clock() - known[1] < self.ttl:
            return str(known[0])
        sha = await self._once(("head", slot), lambda: self.gitlab.branch_head(project, branch))
        self._heads.remember(slot, (sha, self.clock()))
        return sha

    async def layer_at(self, project: int, sha: str) -> RepositoryLayer:
        """The policies of the folder at commit `sha` (compiled off the event loop)."""
        known = self._layers.get((project, sha))
        if known is not None:
            return known
        files = await self.files_at(project, sha, tests=False)
        layer = await self._once(
            ("layer", project, sha), lambda: asyncio.to_thread(compile_layer, sha, files)
        )
        self._layers.remember((project, sha), layer)
        return layer

    async def files_at(
        self, project: int, sha: str, *, tests: bool = True
    ) -> list[tuple[str, bytes]]:
        """The folder's policy files (and test files, with `tests`) at `sha`: (path, bytes)."""
        entries = await self._entries(project, sha)
        wanted = [
            (path, blob)
            for path, blob in entries
            if is_repository_policy(path) or (tests and is_repository_test(path))
        ]
        datas = await asyncio.gather(*(self._blob(project, sha, p, b) for p, b in wanted))
        return [(path, data) for (path, _), data in zip(wanted, datas, strict=True)]

    async def blob_ids(self, project: int, sha: str) -> tuple[tuple[str, str], ...]:
        """(path, blob id) of every policy and test file at `sha`: equal ids, equal files."""
        entries = await self._entries(project, sha)
        return tuple((p, b) for p, b in entries if is_repository_policy(p) or is_repository_test(p))

    async def holds(self, project: int, sha: str, ids: tuple[tuple[str, str], ...]) -> bool:
        """Whether the folder at `sha` holds exactly `ids` (blob_ids); one with too many files
        never does."""
        try:
            return await self.blob_ids(project, sha) == ids
        except TooManyFiles:
            return False

    async def _entries(self, project: int, sha: str) -> tuple[tuple[str, str], ...]:
        """The policy and test files at `sha`; TooManyFiles (remembered too) past MAX_FILES."""
        known: tuple[tuple[str, str], ...] | Crowded | None = self._files.get((project, sha))
        if known is None:
            known = await self._once(("tree", project, sha), lambda: self._read_tree(project, sha))
            self._files.remember((project, sha), known)
        if isinstance(known, Crowded):
            raise TooManyFiles(known)
        return known

    async def _read_tree(self, project: int, sha: str) -> tuple[tuple[str, str], ...] | Crowded:
        counted = 0

        def enough(page: list[Any]) -> bool:
            nonlocal counted
            counted += sum(1 for entry in page if _wanted(entry))
            return counted > MAX_FILES

        try:
            tree = await self.gitlab.tree(project, FOLDER, sha, until=enough)
        except GitLabError as exc:
            if exc.status == 404:  # no such folder at this commit: no repository policies
                return ()
            raise
        blobs = [(str(entry["path"]), str(entry["id"])) for entry in tree if _wanted(entry)]
        if len(blobs) > MAX_FILES:
            # `enough` stops before the last page only: then more pages were left unread.
            complete = counted <= MAX_FILES
            crowded = Crowded(sha, len(blobs), complete)
            log.warning(
                "repository_policies_too_many_files",
                project=project,
                sha=sha,
                files=len(blobs),
                complete=complete,
            )
            return crowded
        return tuple(sorted(blobs))

    async def _blob(self, project: int, sha: str, path: str, blob: str) -> bytes:
        # One byte more than the file may hold tells the loader it is too large.
        cap = MAX_TEST_BYTES if is_repository_test(path) else MAX_POLICY_BYTES
        known = self._blobs.get((project, blob, cap))
        if known is not None:
            return known
        data = await self._once(
            ("blob", project, blob, cap),
            lambda: self.gitlab.raw_file(project, path, sha, limit=cap + 1),
        )
        self._blobs.remember((project, blob, cap), data)
        return data

    async def _once(self, key: Any, read: Callable[[], Awaitable[T]]) -> T:
        """One read per key at a time: concurrent evaluations share it."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(read())
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

"""Policy test cases (`*.test.yaml`): MRs written as facts, with the verdict they must get.

`python -m bot test` runs them so a policy change is checked like code. The same fact builder
(`make_facts`) serves the pytest suite, so tests and test files describe MRs the same way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import typing
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.policy.evaluate import evaluate
from bot.policy.facts import ChangedFile, Commit, GroupMembers, MergeRequestFacts, User
from bot.policy.loader import (
    POLICY_SUFFIXES,
    Loaded,
    compile_policy,
    is_policy_file,
    is_test_file,
    load_folder,
)
from bot.policy.model import Outcome, Policy, PolicyLoadError, PolicyProblem, Rule, Verdict
from bot.policy.nodes import (
    MAX_POLICY_BYTES,
    MAX_TEST_BYTES,
    MAX_YAML_NODES,
    TAG,
    Ctx,
    describe,
    parse_yaml,
    read_limited,
    suggest,
)
from bot.policy.predicates.base import compile_rule_item, rule_names
from bot.policy.predicates.pipeline import PIPELINE_STATUSES

DEFAULT_NOW = dt.datetime(2026, 6, 10, 10, 0, tzinfo=dt.UTC)  # a Wednesday morning, no freeze
DEFAULT_SHA = "0123456789abcdef0123456789abcdef01234567"
MAX_TEST_NODES = 5 * MAX_YAML_NODES  # a test file lists many cases


def user(username: str) -> User:
    """A user with a stable id derived from the name (tests only care about names)."""
    return User(zlib.crc32(username.lower().encode()) % 1_000_000 + 1, username)


def changed_file(spec: str | Mapping[str, Any] | ChangedFile) -> ChangedFile:
    """A path, or a mapping with path/old_path/new_path/new/renamed/deleted/additions/deletions."""
    if isinstance(spec, ChangedFile):
        return spec
    if isinstance(spec, str):
        return ChangedFile(old_path=spec, new_path=spec)
    path = spec.get("path")
    old_path = spec.get("old_path") or path or spec.get("new_path") or ""
    new_path = spec.get("new_path") or path or old_path
    return ChangedFile(
        old_path=old_path,
        new_path=new_path,
        new_file=bool(spec.get("new", spec.get("new_file", False))),
        renamed_file=bool(spec.get("renamed", spec.get("renamed_file", old_path != new_path))),
        deleted_file=bool(spec.get("deleted", spec.get("deleted_file", False))),
        additions=int(spec.get("additions", 0)),
        deletions=int(spec.get("deletions", 0)),
    )


def commit(spec: str | Mapping[str, Any] | Commit, index: int = 0) -> Commit:
    """A commit message, or a mapping with message/sha/author_email."""
    if isinstance(spec, Commit):
        return spec
    if isinstance(spec, str):
        spec = {"message": spec}
    message = str(spec.get("message", ""))
    sha = spec.get("sha") or hashlib.sha1(f"{index}:{message}".encode()).hexdigest()
    return Commit(sha=str(sha), message=message, author_email=str(spec.get("author_email", "")))


def make_facts(
    *,
    title: str = "",
    description: str = "",
    labels: Iterable[str] = (),
    draft: bool = False,
    author: str = "author",
    source_branch: str = "feature",
    target_branch: str = "main",
    project: str = "group/project",
    project_id: int = 1,
    iid: int = 1,
    sha: str = DEFAULT_SHA,
    pipeline: str | None = None,
    has_conflicts: bool = False,
    unresolved_threads: int | None = 0,
    blocking_discussions_resolved: bool | None = None,
    changed_files: Iterable[str | Mapping[str, Any] | ChangedFile] | None = (),
    changed_files_truncated: bool = False,
    approved_by: Iterable[str] | None = (),
    unsettled_approvers: Iterable[str] = (),
    commits: Iterable[str | Mapping[str, Any] | Commit] | None = (),
    group_members: Mapping[str, Iterable[str] | GroupMembers] | None = None,
    now: dt.datetime | str | None = None,
    **more: Any,
) -> MergeRequestFacts:
    """MR facts from plain values; every optional fact is present (empty) unless given None.

    `changed_files_truncated`: GitLab cut the diff, so paths, file count and line counts are all
    lower bounds. `group_members`: usernames that count as members of each group. `more`: any
    other fact of a plain kind (GENERIC_FACTS), as MergeRequestFacts names it, so a new fact
    needs no change here."""
    if isinstance(now, str):
        now = dt.datetime.fromisoformat(now)
    if blocking_discussions_resolved is None:
        blocking_discussions_resolved = not unresolved_threads
    files = None if changed_files is None else tuple(changed_file(s) for s in changed_files)
    fields: dict[str, Any] = dict(
        project_id=project_id,
        project_path=project,
        iid=iid,
        sha=sha,
        title=title,
        description=description,
        labels=tuple(labels),
        draft=draft,
        source_branch=source_branch,
        target_branch=target_branch,
        author=user(author),
        pipeline_status=pipeline,
        blocking_discussions_resolved=blocking_discussions_resolved,
        has_conflicts=has_conflicts,
        changed_files=files,
        changes_count=f"{len(files or ())}{'+' if changed_files_truncated else ''}",
        paths_complete=not changed_files_truncated,
        file_count_exact=not changed_files_truncated,
        line_counts_exact=not changed_files_truncated,
        approved_by=None if approved_by is None else tuple(user(name) for name in approved_by),
        unsettled_approvers=frozenset(name.lower() for name in unsettled_approvers),
        commits=None
        if commits is None
        else tuple(commit(spec, index) for index, spec in enumerate(commits)),
        unresolved_threads=unresolved_threads,
        group_members={
            group.strip("/").lower(): names
            if isinstance(names, GroupMembers)
            else GroupMembers(frozenset(name.lstrip("@").lower() for name in names))
            for group, names in (group_members or {}).items()
        },
        now=now or DEFAULT_NOW,
    )
    # A fact given by name overrides what the arguments above imply (e.g. changes_count).
    fields.update((name, _plain(name, value)) for name, value in more.items())
    return MergeRequestFacts(**fields)


def _fact_kinds() -> dict[str, str]:
    """MergeRequestFacts fields of a plain kind: "bool", "int", "str" or "strings" (a tuple or
    frozenset of strings), whether or not they may be None."""
    kinds: dict[str, str] = {}
    for name, hint in typing.get_type_hints(MergeRequestFacts).items():
        options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if typing.get_origin(hint) in (tuple, frozenset):
            options = [hint]
        if len(options) != 1:
            continue
        kind, origin = options[0], typing.get_origin(options[0])
        if kind in (bool, int, str):
            kinds[name] = kind.__name__
        elif origin in (tuple, frozenset) and typing.get_args(kind)[:1] == (str,):
            kinds[name] = "strings"
    return kinds


def _plain(name: str, value: Any) -> Any:
    if name not in GENERIC_FACTS:
        raise TypeError(f"make_facts() has no fact {name!r} (known: {sorted(GENERIC_FACTS)})")
    if GENERIC_FACTS[name] == "strings" and value is not None:
        kind = typing.get_origin(typing.get_type_hints(MergeRequestFacts)[name])
        return (frozenset if kind is frozenset else tuple)(str(v) for v in value)
    return value


def compile_rule(text: str) -> Rule:
    """One rule item from YAML text (`labels: {any: [x]}`), for tests of single predicates."""
    ctx = Ctx("rule.yml")
    root = parse_yaml("rule.yml", text, ctx.problems)
    rule = compile_rule_item(ctx, root) if root is not None else None
    if ctx.problems or rule is None:
        raise PolicyLoadError(ctx.problems or [PolicyProblem("rule.yml", 1, "empty rule")])
    return rule


# --- the test file format --------------------------------------------------------------------

FILE_KEYS = ("policy", "defaults", "cases")
CASE_KEYS = ("name", "mr", "expect")
EXPECT_KEYS = ("verdict", "failing", "applicable", "reason")
MR_KEYS = (
    "title",
    "description",
    "labels",
    "draft",
    "author",
    "source_branch",
    "target_branch",
    "project",
    "sha",
    "pipeline",
    "has_conflicts",
    "unresolved_threads",
    "blocking_discussions_resolved",
    "changed_files",
    "changed_files_truncated",
    "approved_by",
    "commits",
    "group_members",
    "now",
)
# Facts a test case may give under their MergeRequestFacts name, with no code of their own here:
# every field of a plain kind that MR_KEYS and make_facts do not already cover.
_EXPLICIT = {*MR_KEYS, "project_path", "project_id", "iid", "author", "pipeline_status"}
GENERIC_FACTS = {k: v for k, v in _fact_kinds().items() if k not in _EXPLICIT}
CHANGE_KEYS = (
    "path",
    "old_path",
    "new_path",
    "new",
    "renamed",
    "deleted",
    "additions",
    "deletions",
)
COMMIT_KEYS = ("message", "sha", "author_email")


@dataclass
class Expectation:
    verdict: str
    failing: list[tuple[str, Node]] | None = None
    applicable: bool | None = None
    reason: str | None = None


@dataclass
class Case:
    name: str
    line: int
    mr: dict[str, Any]
    expect: Expectation


@dataclass
class TestFile:
    path: Path
    policy: Policy | None = None
    cases: list[Case] = field(default_factory=list)
    problems: list[PolicyProblem] = field(default_factory=list)


def _mr_values(ctx: Ctx, node: Node, what: str) -> dict[str, Any] | None:
    """An `mr:` (or `defaults:`) mapping -> make_facts keyword arguments."""
    entries = ctx.mapping(node, what)
    if entries is None or not ctx.known_keys(entries, (*MR_KEYS, *GENERIC_FACTS), what):
        return None
    values: dict[str, Any] = {}
    ok = True
    for key, entry in entries.items():
        value = _mr_value(ctx, key, entry.node)
        if value is _BAD:
            ok = False
        else:
            values[key] = value
    return values if ok else None


_BAD = object()


def _generic_value(ctx: Ctx, kind: str, node: Node, what: str) -> Any:
    """A fact of a plain kind, read as its kind says (GENERIC_FACTS)."""
    value: Any
    if kind == "bool":
        value = ctx.boolean(node, what)
    elif kind == "int":
        value = ctx.integer(node, what)
    elif kind == "str":
        value = ctx.string(node, what, allow_empty=True)
    else:
        items = ctx.string_list(node, what, single_ok=True, allow_empty_list=True)
        value = None if items is None else [text for text, _ in items]
    return _BAD if value is None else value


def _mr_value(ctx: Ctx, key: str, node: Node) -> Any:
    what = f"`{key}`"
    value: Any
    if key in GENERIC_FACTS:
        return _generic_value(ctx, GENERIC_FACTS[key], node, what)
    if key in (
        "draft",
        "has_conflicts",
        "blocking_discussions_resolved",
        "changed_files_truncated",
    ):
        value = ctx.boolean(node, what)
    elif key == "unresolved_threads":
        value = ctx.integer(node, what, minimum=0)
    elif key == "description":
        value = ctx.string(node, what, allow_empty=True)
    elif key in ("labels", "approved_by"):
        items = ctx.string_list(node, what, single_ok=True, allow_empty_list=True)
        value = None if items is None else [text for text, _ in items]
    elif key == "pipeline":
        if isinstance(node, ScalarNode) and node.tag == TAG + "null":
            return None
        value = ctx.string(node, what)
        if value is not None and value not in PIPELINE_STATUSES:
            ctx.error(node, f"unknown pipeline status `{value}`{suggest(value, PIPELINE_STATUSES)}")
            value = None
    elif key == "now":
        value = _moment(ctx, node)
    elif key == "changed_files":
        value = _list_of(ctx, node, what, CHANGE_KEYS, _change)
    elif key == "commits":
        value = _list_of(ctx, node, what, COMMIT_KEYS, _commit)
    elif key == "group_members":
        value = _groups(ctx, node)
    else:
        value = ctx.string(node, what)
    return _BAD if value is None else value


def _moment(ctx: Ctx, node: Node) -> dt.datetime | None:
    text = ctx.string(node, "`now`")
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        ctx.error(node, f"`now`: `{text}` is not an ISO time like 2026-03-27T15:00:00+01:00")
        return None
    if moment.tzinfo is None:
        ctx.error(node, f"`now`: `{text}` needs a UTC offset, e.g. {text.strip()}Z or +01:00")
        return None
    return moment


def _list_of(ctx: Ctx, node: Node, what: str, keys: tuple[str, ...], build: Any) -> list | None:
    if not isinstance(node, SequenceNode):
        ctx.error(node, f"{what} must be a list, got {describe(node)}")
        return None
    items = []
    ok = True
    for item in node.value:
        if isinstance(item, MappingNode):
            entries = ctx.mapping(item, f"an item of {what}")
            if entries is None or not ctx.known_keys(entries, keys, f"an item of {what}"):
                ok = False
                continue
            spec = build(ctx, item, entries)
        else:
            spec = ctx.string(item, f"an item of {what}")
        if spec is None:
            ok = False
        else:
            items.append(spec)
    return items if ok else None


def _change(ctx: Ctx, node: Node, entries: dict) -> dict[str, Any] | None:
    spec: dict[str, Any] = {}
    for key, entry in entries.items():
        if key in ("new", "renamed", "deleted"):
            spec[key] = ctx.boolean(entry.node, f"`{key}`")
        elif key in ("additions", "deletions"):
            spec[key] = ctx.integer(entry.node, f"`{key}`", minimum=0)
        else:
            spec[key] = ctx.string(entry.node, f"`{key}`")
    if any(value is None for value in spec.values()):
        return None
    if not ({"path", "old_path", "new_path"} & spec.keys()):
        ctx.error(node, "a changed file needs `path` (or `old_path`/`new_path`)")
        return None
    return spec


def _commit(ctx: Ctx, node: Node, entries: dict) -> dict[str, Any] | None:
    spec = {key: ctx.string(entry.node, f"`{key}`") for key, entry in entries.items()}
    if any(value is None for value in spec.values()):
        return None
    if "message" not in spec:
        ctx.error(node, "a commit needs a `message`")
        return None
    return spec


def _groups(ctx: Ctx, node: Node) -> dict[str, list[str]] | None:
    entries = ctx.mapping(node, "`group_members`")
    if entries is None:
        return None
    groups = {}
    for key, entry in entries.items():
        items = ctx.string_list(entry.node, f"`group_members.{key}`", allow_empty_list=True)
        if items is None:
            return None
        groups[key] = [text for text, _ in items]
    return groups


def _expectation(ctx: Ctx, node: Node) -> Expectation | None:
    if isinstance(node, ScalarNode):
        verdict = ctx.string(node, "`expect`")
        if verdict not in ("passed", "failed"):
            if verdict is not None:
                ctx.error(node, f"`expect` must be passed or failed, got `{verdict}`")
            return None
        return Expectation(verdict)
    entries = ctx.mapping(node, "`expect`")
    if entries is None or not ctx.known_keys(entries, EXPECT_KEYS, "`expect`"):
        return None
    if "verdict" not in entries:
        ctx.error(node, "`expect` needs `verdict: passed` or `verdict: failed`")
        return None
    expectation = _expectation(ctx, entries["verdict"].node)
    if expectation is None:
        return None
    if "failing" in entries:
        items = ctx.string_list(
            entries["failing"].node, "`failing`", single_ok=True, allow_empty_list=True
        )
        if items is None:
            return None
        expectation.failing = items
    if "applicable" in entries:
        expectation.applicable = ctx.boolean(entries["applicable"].node, "`applicable`")
        if expectation.applicable is None:
            return None
    if "reason" in entries:
        expectation.reason = ctx.string(entries["reason"].node, "`reason`")
        if expectation.reason is None:
            return None
    return expectation


class PolicyCache:
    """Policies per folder, loaded once per run (with their problems).

    `confine`: test files may name policy files only inside this folder. The bot runs the test
    files an MR proposes; a `policy:` path must not make it read (and quote) files of its host.
    """

    def __init__(self, confine: Path | None = None) -> None:
        self.confine = confine.resolve() if confine is not None else None
        self.folders: dict[Path, Loaded] = {}
        self.files: dict[Path, tuple[Policy | None, list[PolicyProblem]]] = {}

    def folder(self, folder: Path) -> Loaded:
        key = folder.resolve()
        if key not in self.folders:
            self.folders[key] = load_folder(folder)
        return self.folders[key]

    def file(self, path: Path) -> tuple[Policy | None, list[PolicyProblem]]:
        key = path.resolve()
        if key not in self.files:
            data, problems = read_limited(str(path), MAX_POLICY_BYTES, "policy file")
            if data is None:
                self.files[key] = (None, problems)
            else:
                policy, ctx = compile_policy(str(path), data, path.name.split(".")[0])
                self.files[key] = (policy, ctx.problems)
        return self.files[key]


def policy_folder_of(test_path: Path) -> Path:
    """Where a test file's policies live: beside it, or above it when it is in `tests/`."""
    folder = test_path.parent
    return folder.parent if folder.name == "tests" else folder


def parse_test_file(
    path: Path, cache: PolicyCache | None = None, folder: Path | None = None
) -> TestFile:
    """Parse a test file and resolve its policy (a check name is looked up in `folder`)."""
    cache = cache or PolicyCache()
    result = TestFile(path)
    try:
        return _parse_test_file(path, cache, folder, result)
    except (RecursionError, MemoryError) as exc:
        message = f"the test file is too complex to read ({exc!r})"
    except Exception as exc:  # a gap in the checks: still one line, never a traceback
        message = f"the test file could not be read: {type(exc).__name__}: {exc}"
    result.policy = None
    result.cases = []
    result.problems.append(PolicyProblem(str(path), 1, message))
    return result


def _parse_test_file(
    path: Path, cache: PolicyCache, folder: Path | None, result: TestFile
) -> TestFile:
    ctx = Ctx(str(path))
    data, problems = read_limited(str(path), MAX_TEST_BYTES, "test file")
    if data is None:
        result.problems += problems
        return result
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the test file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        result.problems.append(PolicyProblem(str(path), 1, message))
        return result
    root = parse_yaml(str(path), text, ctx.problems, max_nodes=MAX_TEST_NODES)
    if root is None:
        if not ctx.problems:
            ctx.error(1, "the test file is empty: give `policy` and `cases`")
        result.problems = ctx.problems
        return result
    entries = ctx.mapping(root, "a test file")
    if entries is None:
        result.problems = ctx.problems
        return result
    ctx.known_keys(entries, FILE_KEYS, "a test file")
    for key in ("policy", "cases"):
        if key not in entries:
            ctx.error(root, f"the test file needs `{key}`")
    if "policy" in entries:
        folder = folder or policy_folder_of(path)
        result.policy = _resolve_policy(ctx, entries["policy"].node, path, folder, cache, result)
    defaults: dict[str, Any] | None = {}
    if "defaults" in entries:
        defaults = _mr_values(ctx, entries["defaults"].node, "`defaults`")
    items = ctx.sequence(entries["cases"].node, "`cases`") if "cases" in entries else None
    for number, item in enumerate(items or (), start=1):
        case = _case(ctx, item, number, defaults or {})
        if case is not None and defaults is not None:  # broken defaults: report, run nothing
            result.cases.append(case)
    if result.policy is not None:
        result.cases = _check_failing_names(ctx, result.policy, result.cases)
    result.problems = ctx.problems + result.problems
    return result


def _check_failing_names(ctx: Ctx, policy: Policy, cases: list[Case]) -> list[Case]:
    """`failing:` must name rules the policy has (by `name:` label or predicate key). A case
    naming one it does not have is reported and not run: one mistake, one failure."""
    names = rule_names(policy.rules)
    sound = []
    for case in cases:
        unknown = [(n, node) for n, node in case.expect.failing or () if n not in names]
        for name, node in unknown:
            known = ", ".join(dict.fromkeys(names))
            ctx.error(
                node,
                f"`failing`: `{policy.check}` has no rule `{name}`{suggest(name, names)} "
                f"(its rules: {known})",
            )
        if not unknown:
            sound.append(case)
    return sound


def _case(ctx: Ctx, node: Node, number: int, defaults: dict[str, Any]) -> Case | None:
    entries = ctx.mapping(node, "a case")
    if entries is None or not ctx.known_keys(entries, CASE_KEYS, "a case"):
        return None
    name = f"case {number}"
    if "name" in entries:
        name = ctx.string(entries["name"].node, "`name`") or name
    mr: dict[str, Any] | None = {}
    if "mr" in entries:
        mr = _mr_values(ctx, entries["mr"].node, "`mr`")
    if "expect" not in entries:
        ctx.error(node, "a case needs `expect: passed` or `expect: failed`")
        return None
    expect = _expectation(ctx, entries["expect"].node)
    if mr is None or expect is None:
        return None
    merged = {**defaults, **mr}
    if "group_members" in defaults and "group_members" in mr:
        merged["group_members"] = {**defaults["group_members"], **mr["group_members"]}
    return Case(name, line_of_node(node), merged, expect)


def line_of_node(node: Node) -> int:
    return node.start_mark.line + 1


def _resolve_policy(
    ctx: Ctx, node: Node, test_path: Path, folder: Path, cache: PolicyCache, result: TestFile
) -> Policy | None:
    """`policy:` is a check name (looked up in the policy folder) or a policy file path."""
    ref = ctx.string(node, "`policy`")
    if ref is None:
        return None
    if ref.endswith(POLICY_SUFFIXES):
        target = (test_path.parent / ref).resolve()
        if cache.confine is not None and not target.is_relative_to(cache.confine):
            # Said before looking, so that the answer tells nothing about the host's files.
            ctx.error(node, "`policy`: name a check, or a policy file in this folder")
            return None
        if not target.is_file():
            ctx.error(node, f"`policy`: no policy file {ref} (relative to this test file)")
            return None
        policy, problems = cache.file(target)
        result.problems += problems
        return policy
    loaded = cache.folder(folder)
    for policy in loaded.policies:
        if policy.check == ref:
            return policy
    # A file that does not compile decides the check if it says `check: <ref>`, or is named so.
    claiming = {claim.path for claim in loaded.claims if claim.check == ref}
    broken = [
        problem
        for problem in loaded.problems
        if problem.path in claiming or Path(problem.path).name.split(".")[0] == ref
    ]
    if broken:
        result.problems += broken
        return None
    checks = [policy.check for policy in loaded.policies]
    ctx.error(
        node,
        f"`policy`: no policy with check `{ref}` in {folder}{suggest(ref, checks)}"
        + (f" (checks: {', '.join(checks)})" if checks else ""),
    )
    return None


def validate_test_file(path: Path) -> list[PolicyProblem]:
    return parse_test_file(path).problems


# --- running -----------------------------------------------------------------------------------


def failing_mismatch(root: Outcome, expected: list[str]) -> str | None:
    """None when the failing rules are exactly those expected (a name covers what is under it)."""
    failing_names: set[str] = set()
    leaves: list[tuple[str, list[str]]] = []

    def walk(outcome: Outcome, ancestors: list[str]) -> None:
        if outcome.passed:
            return
        failing_names.add(outcome.rule)
        failing_children = [child for child in outcome.children if not child.passed]
        if not failing_children:
            leaves.append((outcome.rule, ancestors))
        for child in failing_children:
            walk(child, [*ancestors, outcome.rule])

    for child in root.children:
        walk(child, [])
    missing = [name for name in expected if name not in failing_names]
    extra = [
        leaf
        for leaf, ancestors in leaves
        if leaf not in expected and not any(name in expected for name in ancestors)
    ]
    if not missing and not extra:
        return None
    got = ", ".join(dict.fromkeys(leaf for leaf, _ in leaves))
    return f"expected failing rules [{', '.join(expected)}], got [{got}]"


def check_case(verdict: Verdict, expect: Expectation) -> list[str]:
    """What differs between a verdict and the expectation (empty when the case passes)."""
    problems = []
    if verdict.status != expect.verdict:
        problems.append(f"expected {expect.verdict}, got {verdict.status}")
    if expect.applicable is not None and verdict.applicable != expect.applicable:
        wanted = "applicable" if expect.applicable else "not applicable"
        got = "applicable" if verdict.applicable else "not applicable"
        problems.append(f"expected {wanted}, got {got}")
    if expect.failing is not None and verdict.outcome is not None:
        mismatch = failing_mismatch(verdict.outcome, [name for name, _ in expect.failing])
        if mismatch:
            problems.append(mismatch)
    if expect.reason is not None and expect.reason not in verdict.reason:
        problems.append(f"expected the reason to contain {expect.reason!r}")
    return problems


@dataclass
class Found:
    """A test file to run, found once however many of the given paths lead to it."""

    path: Path
    folder: Path  # where its `policy:` check name is looked up
    only: set[Path] | None  # run it only if its policy is one of these files (None: whatever)
    given: list[str]  # the paths given that lead to it


def discover(paths: list[str]) -> tuple[list[Found], list[PolicyProblem]]:
    """The test files under `paths`, each once: a folder's (beside its policies or under its
    `tests/`), a test file itself, or a policy file's (then only the tests of that policy)."""
    found: dict[Path, Found] = {}
    problems: list[PolicyProblem] = []
    for raw in paths:
        path = Path(raw)
        only: Path | None = None
        if path.is_dir():
            tests, folder = tests_of_folder(path), policy_folder(path)
        elif path.is_file() and is_test_file(path):
            tests, folder = [path], policy_folder_of(path)
        elif path.is_file() and is_policy_file(path):
            tests, folder, only = tests_of_folder(path.parent), path.parent, path.resolve()
        else:
            problems.append(PolicyProblem(raw, 1, "no such file or folder"))
            continue
        for test in tests:
            entry = found.setdefault(test.resolve(), Found(test, folder, set(), []))
            if only is None:
                entry.only = None
            elif entry.only is not None:
                entry.only.add(only)
            entry.given.append(raw)
    return list(found.values()), problems


def tests_of_folder(folder: Path) -> list[Path]:
    """The test files of a policy folder: beside its policies, and anywhere under `tests/`."""
    tests = [path for path in folder.iterdir() if path.is_file() and is_test_file(path)]
    if (folder / "tests").is_dir():
        tests += [p for p in (folder / "tests").rglob("*") if p.is_file() and is_test_file(p)]
    return sorted(tests)


def policy_folder(folder: Path) -> Path:
    """The policy folder of a folder given to `test` or `validate`: itself, or for a `tests/`
    folder holding test files only (as `policies/tests`), the folder above."""
    if folder.resolve().name == "tests" and not any(is_policy_file(p) for p in folder.iterdir()):
        return folder.parent if folder.name == "tests" else folder.resolve().parent
    return folder


NO_CASES = "no test cases in {where} (put *.test.yaml files beside the policies or under tests/)"


def run_tests(paths: list[str], out: TextIO, confine: Path | None = None) -> tuple[int, int]:
    """Run the test cases under `paths`, each once; one line per case, then `N passed, N failed`.

    A problem in a test file or in a policy it names counts as one failure (printed once as
    `ERROR path:line: message`), so a broken file can never make the run look green; so does a
    path that holds no test case while others do. When no path holds any, nothing is written
    and (0, 0) returned: the caller says so (`NO_CASES`) and fails. `confine`: see PolicyCache.
    """
    cache = PolicyCache(confine)
    passed = failed = 0
    tests, problems = discover(paths)
    reported: set[str] = set()
    tested: set[str] = {problem.path for problem in problems}

    def report(problem: PolicyProblem) -> None:
        nonlocal failed
        if str(problem) not in reported:
            reported.add(str(problem))
            out.write(f"ERROR {problem}\n")
            failed += 1

    for problem in problems:
        report(problem)
    for found in tests:
        test = parse_test_file(_relative(found.path), cache, found.folder)
        only = found.only
        about = Path(test.policy.path).resolve() if test.policy is not None else None
        if only is not None and about not in only:
            continue
        if test.problems or test.cases:
            tested.update(found.given)
        for problem in test.problems:
            report(problem)
        if test.policy is None:
            continue
        for case in test.cases:
            where = f"[{test.path}:{case.line}]"
            try:
                verdict = evaluate(test.policy, make_facts(**case.mr))
            except Exception as exc:  # a crash in a rule is a failed case, not a crashed run
                out.write(f"FAIL {test.policy.check}: {case.name}: error: {exc!r} {where}\n")
                failed += 1
                continue
            mismatches = check_case(verdict, case.expect)
            if mismatches:
                out.write(
                    f"FAIL {test.policy.check}: {case.name}: {'; '.join(mismatches)} "
                    f"({verdict.reason}) {where}\n"
                )
                failed += 1
            else:
                out.write(f"PASS {test.policy.check}: {case.name}\n")
                passed += 1
    if not tested:
        return 0, 0
    for raw in dict.fromkeys(paths):
        if raw not in tested:
            out.write(f"ERROR {NO_CASES.format(where=raw)}\n")
            failed += 1
    out.write(f"{passed} passed, {failed} failed\n")
    return passed, failed


def _relative(path: Path) -> Path:
    """Show paths relative to the working folder when possible (shorter FAIL/ERROR lines)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


__all__ = [
    "DEFAULT_NOW",
    "DEFAULT_SHA",
    "NO_CASES",
    "compile_rule",
    "make_facts",
    "parse_test_file",
    "run_tests",
    "validate_test_file",
]

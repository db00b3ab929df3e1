"""YAML policy files -> compiled `Policy` objects, reporting every problem as `path:line: message`.

Loading never stops at the first problem: an author fixing a file sees all of its mistakes at once,
and a folder load reports every file's problems before refusing the set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from yaml.nodes import MappingNode

from bot.policy import combinators as _combinators  # noqa: F401  (registers all/any/not)
from bot.policy import predicates as _predicates  # noqa: F401  (registers the predicates)
from bot.policy.model import Policy, PolicyLoadError, PolicyProblem, PolicySet, Rule
from bot.policy.nodes import (
    MAX_POLICY_BYTES,
    Ctx,
    Entry,
    describe,
    parse_yaml,
    read_limited,
    suggest,
    too_large,
)
from bot.policy.predicates.base import REGISTRY, compile_rule_item
from bot.policy.predicates.scope import compile_applies_to

TOP_KEYS = ("check", "description", "mode", "applies_to", "require", "comment", "replaceable")
MODES = ("enforce", "advisory")
COMMENTS = ("never", "on_failure", "always")
POLICY_SUFFIXES = (".yml", ".yaml")
TEST_SUFFIXES = (".test.yml", ".test.yaml")


def is_test_file(path: PurePath) -> bool:
    return path.name.endswith(TEST_SUFFIXES)


def is_policy_file(path: PurePath) -> bool:
    """A policy file: `*.yml`/`*.yaml`, not a test file, not hidden (editor/tool files)."""
    return (
        path.name.endswith(POLICY_SUFFIXES)
        and not is_test_file(path)
        and not path.name.startswith(".")
    )


def policy_files(folder: Path) -> list[Path]:
    """The policy files directly in a folder (not recursive), in name order."""
    return sorted(path for path in folder.iterdir() if path.is_file() and is_policy_file(path))


def compile_policy(path: str, data: bytes, default_check: str) -> tuple[Policy | None, Ctx]:
    """Compile one policy file's bytes; the Ctx carries every problem found.

    Whatever the bytes, this returns: limits (size, YAML depth, alias expansion) keep it short,
    and anything no check foresaw is one problem at line 1, never an exception."""
    ctx = Ctx(path)
    oversized = too_large(path, len(data), MAX_POLICY_BYTES, "policy file")
    if oversized is not None:
        ctx.problems.append(oversized)
        return None, ctx
    try:
        return _compile_policy(ctx, path, data, default_check)
    except (RecursionError, MemoryError) as exc:
        ctx.problems = [PolicyProblem(path, 1, f"the policy is too complex to read ({exc!r})")]
    except Exception as exc:  # a gap in the checks: still the author's file, still one line
        ctx.problems.append(
            PolicyProblem(path, 1, f"the policy could not be read: {type(exc).__name__}: {exc}")
        )
    return None, ctx


def _compile_policy(
    ctx: Ctx, path: str, data: bytes, default_check: str
) -> tuple[Policy | None, Ctx]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ctx.error(1, f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None, ctx
    root = parse_yaml(path, text, ctx.problems)
    if ctx.problems:
        return None, ctx
    if root is None:
        ctx.error(1, "the file is empty: a policy needs at least a `require` list")
        return None, ctx
    if not isinstance(root, MappingNode):
        ctx.error(
            root, f"a policy file must be a mapping (check, require, ...), got {describe(root)}"
        )
        return None, ctx
    entries = ctx.mapping(root, "the policy")
    if entries is None:
        return None, ctx
    for entry in entries.values():
        if entry.key not in TOP_KEYS and entry.key in REGISTRY:
            ctx.error(
                entry.key_node,
                f"unknown key `{entry.key}` at the top of the policy; "
                f"`{entry.key}` is a predicate: put it in a list item under `require:`",
            )
        elif entry.key not in TOP_KEYS:
            ctx.known_keys({entry.key: entry}, TOP_KEYS, "the policy")

    check, line = default_check, 1
    ctx.check = (check, line)
    if "check" in entries:
        line = entries["check"].line
        named = ctx.string(entries["check"].node, "`check`")
        check = named or default_check
        ctx.check = (check, line) if named else None
    description = ""
    if "description" in entries:
        description = (
            ctx.string(entries["description"].node, "`description`", allow_empty=True) or ""
        )
    mode = _choice(ctx, entries, "mode", MODES, "enforce")
    comment = _choice(ctx, entries, "comment", COMMENTS, "never")
    # A central policy a repository may replace (docs/architecture.md#repository-policies).
    replaceable = False
    if "replaceable" in entries:
        replaceable = bool(ctx.boolean(entries["replaceable"].node, "`replaceable`"))

    applies_to: tuple[Rule, ...] | None = ()
    if "applies_to" in entries:
        applies_to = compile_applies_to(ctx, entries["applies_to"].node)

    rules: list[Rule | None] = []
    if "require" not in entries:
        ctx.error(root, "the policy has no `require` list: give at least one rule")
    else:
        require = entries["require"]
        items = ctx.sequence(require.node, "`require`") if require.node.value else None
        if not require.node.value:
            ctx.error(require.key_node, "`require` is empty: give at least one rule")
        for item in items or ():
            rules.append(compile_rule_item(ctx, item, "an item of `require`"))

    if ctx.problems or applies_to is None or any(rule is None for rule in rules):
        ctx.problems.sort(key=lambda problem: problem.line)
        return None, ctx
    policy = Policy(
        check=check,
        path=path,
        digest=hashlib.sha256(data).hexdigest(),
        rules=tuple(rule for rule in rules if rule is not None),
        applies_to=applies_to,
        description=description,
        mode=mode,  # type: ignore[arg-type]
        comment=comment,  # type: ignore[arg-type]
        line=line,
        replaceable=replaceable,
    )
    return policy, ctx


def _choice(
    ctx: Ctx, entries: dict[str, Entry], key: str, choices: tuple[str, ...], default: str
) -> str:
    if key not in entries:
        return default
    node = entries[key].node
    value = ctx.string(node, f"`{key}`")
    if value is None:
        return default
    if value not in choices:
        ctx.error(
            node,
            f"`{key}` must be one of {', '.join(choices)}, got `{value}`{suggest(value, choices)}",
        )
        return default
    return value


def _read(path: Path) -> tuple[bytes | None, list[PolicyProblem]]:
    return read_limited(str(path), MAX_POLICY_BYTES, "policy file")


@dataclass(frozen=True)
class Claim:
    """A file deciding a check (known even when the rest of the file is broken)."""

    check: str
    path: str
    line: int


@dataclass
class Loaded:
    """What loading some files gave: the policies that compiled, the problems, the claims."""

    policies: list[Policy] = field(default_factory=list)
    problems: list[PolicyProblem] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    digest: str = ""

    def add_file(self, path: Path) -> bytes | None:
        data, problems = _read(path)
        self.problems += problems
        if data is None:
            return None
        policy, ctx = compile_policy(str(path), data, path.name.split(".")[0])
        self.problems += ctx.problems
        if policy is not None:
            self.policies.append(policy)
        if ctx.check is not None:
            self.claims.append(Claim(ctx.check[0], str(path), ctx.check[1]))
        return data


def check_duplicates(claims: list[Claim]) -> list[PolicyProblem]:
    """Two files deciding the same status check: report the second, naming the first."""
    problems: list[PolicyProblem] = []
    first: dict[str, Claim] = {}
    for claim in claims:
        earlier = first.setdefault(claim.check, claim)
        if earlier is not claim:
            problems.append(
                PolicyProblem(
                    claim.path,
                    claim.line,
                    f"duplicate check `{claim.check}`: already defined in "
                    f"{earlier.path}:{earlier.line}",
                )
            )
    return problems


def load_folder(folder: Path) -> Loaded:
    """Every policy of a folder that compiles, every problem but duplicates, and the digest."""
    loaded = Loaded()
    if not folder.exists():
        loaded.problems.append(PolicyProblem(str(folder), 1, "no such file or folder"))
        return loaded
    files = [folder] if folder.is_file() else policy_files(folder)
    digest = hashlib.sha256()
    for path in files:
        data = loaded.add_file(path)
        if data is not None:
            digest.update(path.name.encode() + b"\0" + data + b"\0")
    loaded.digest = digest.hexdigest()
    return loaded


def load_policy_file(path: str | Path) -> Policy:
    """Load one policy file; raises PolicyLoadError with every problem."""
    loaded = Loaded()
    loaded.add_file(Path(path))
    policy = loaded.policies[0] if loaded.policies else None
    problems = loaded.problems
    if problems or policy is None:
        raise PolicyLoadError(problems)
    return policy


def load_policy_text(text: str, path: str = "policy.yml") -> Policy:
    """Load a policy from text (tests, tools); `path` is used in problems and as check default."""
    policy, ctx = compile_policy(path, text.encode(), Path(path).name.split(".")[0])
    if ctx.problems or policy is None:
        raise PolicyLoadError(ctx.problems)
    return policy


def load_policy_dir(path: str | Path) -> PolicySet:
    """Load `*.yml`/`*.yaml` of a folder (not `*.test.yaml`, not `tests/`); all or nothing."""
    loaded = load_folder(Path(path))
    problems = loaded.problems + check_duplicates(loaded.claims)
    if problems:
        raise PolicyLoadError(problems)
    return PolicySet(
        policies=tuple(loaded.policies),
        digest=loaded.digest,
        by_check={policy.check: policy for policy in loaded.policies},
    )


REPOSITORY_FOLDER = ".gitlab/status-checks"  # README "Policies in your repository"
REPOSITORY_REPLACEABLE = "`replaceable` is for central policies: remove it here"
# The bot's own check of MRs that change the folder: a repository cannot define it, or a
# merged file could switch off the validation and preview of every later policy change.
POLICY_CHECK = "status-check-policies"
REPOSITORY_RESERVED = f"`{POLICY_CHECK}` is the bot's own check of policy changes: remove it here"


def in_repository_folder(path: str | Path) -> bool:
    """A file of a checked-out repository's policy folder (`validate` then judges it as the
    bot will read it from the target branch)."""
    return f"/{REPOSITORY_FOLDER}/" in Path(path).absolute().as_posix()


def repository_refusals(path: str, check: str, line: int, replaceable: bool) -> list[PolicyProblem]:
    """What a policy file may say centrally but not in a repository's folder (the bot fails
    the check, `validate` reports it)."""
    refusals = [(REPOSITORY_REPLACEABLE, replaceable), (REPOSITORY_RESERVED, check == POLICY_CHECK)]
    return [PolicyProblem(path, line, message) for message, refused in refusals if refused]


def validate_paths(paths: list[str], confine: Path | None = None) -> list[PolicyProblem]:
    """Every problem in the given policy files and folders and in the test files they hold
    (given, or in a given folder beside its policies or under its `tests/`), each once."""
    from bot.policy.testing import PolicyCache, discover, parse_test_file  # it imports us

    problems: list[PolicyProblem] = []
    claims: list[Claim] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and is_test_file(path):
            continue
        loaded = load_folder(path)  # a folder, or one policy file
        problems += loaded.problems
        claims += loaded.claims
        for policy in loaded.policies:
            if in_repository_folder(policy.path):
                problems += repository_refusals(
                    policy.path, policy.check, policy.line, policy.replaceable
                )
    problems += check_duplicates(claims)
    cache = PolicyCache(confine)  # test files name policies only inside `confine`, if given
    tests, _ = discover(paths)
    for found in tests:
        if found.only is None:  # a policy file given alone is checked alone
            problems += parse_test_file(found.path, cache, found.folder).problems
    return list({str(problem): problem for problem in problems}.values())

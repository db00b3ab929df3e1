"""Reading YAML as nodes, so every key and value keeps the line it came from.

Policies and test files are parsed with `yaml.compose` (never `yaml.load`): the node tree keeps
`start_mark` for each key and value, and scalars keep their raw text, so `16:00` stays a time and
`2026-12-20` stays a date string instead of turning into YAML 1.1 numbers and dates.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.policy.model import PolicyProblem

TAG = "tag:yaml.org,2002:"
_BOOL_VALUES = {key.lower(): value for key, value in yaml.SafeLoader.bool_values.items()}
_CONSTRUCTOR = yaml.SafeLoader("")

# Limits on what a policy or test file may be (a hostile or broken file must cost little):
MAX_POLICY_BYTES = 64 * 1024  # the shipped policies are under 2 kB; 64 kB is ~1,000 rules
MAX_TEST_BYTES = 256 * 1024  # test files list cases: a few thousand of them
MAX_YAML_DEPTH = 64  # levels of nesting (lists in mappings in lists...); real files use < 10
# Nodes once every alias is expanded: what compiling the file walks. Aliases are fine, but
# nine aliases to nine aliases to ... (the "billion laughs") would expand to millions.
MAX_YAML_NODES = 20_000


class YAMLLimitError(yaml.MarkedYAMLError):
    """The YAML is too deep, expands to too many nodes, or refers to itself."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer with limits, checked while composing (before anything recurses
    over the tree): nesting depth, the expanded node count (an alias counts as the whole node it
    names), and no alias to a node that contains it (a recursive structure)."""

    def __init__(self, stream: str, max_nodes: int, max_depth: int) -> None:
        super().__init__(stream)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self._depth = 0
        self._nodes = 0
        self._open: set[str] = set()  # anchors of the collections being composed
        self._extent: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)

    def _measure(self, node: Node) -> tuple[int, int]:
        """Expanded size and depth of a composed (acyclic) node, memoised: linear in the
        number of distinct nodes whatever the expansion."""
        known = self._extent.get(id(node))
        if known is not None:
            return known
        size, depth = 1, 1
        if isinstance(node, SequenceNode | MappingNode):
            children = (
                node.value
                if isinstance(node, SequenceNode)
                else [part for pair in node.value for part in pair]
            )
            for child in children:
                child_size, child_depth = self._measure(child)
                size += child_size
                depth = max(depth, child_depth + 1)
        self._extent[id(node)] = (size, depth)
        return size, depth

    def _spend(self, nodes: int, depth: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        if self._nodes > self.max_nodes:
            raise YAMLLimitError(
                None,
                None,
                f"the YAML expands to more than {self.max_nodes} nodes (aliases count as what "
                "they repeat): too big for a policy",
                mark,
            )
        if self._depth + depth > self.max_depth:
            raise YAMLLimitError(
                None, None, f"the YAML is nested more than {self.max_depth} levels deep", mark
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if self.check_event(AliasEvent):
            anchor = event.anchor
            if anchor in self._open:
                raise YAMLLimitError(
                    None,
                    None,
                    f"the alias *{anchor} refers to a node that contains it: a recursive "
                    "structure cannot be a policy",
                    event.start_mark,
                )
            if anchor in self.anchors:
                self._spend(*self._measure(self.anchors[anchor]), event.start_mark)
            return super().compose_node(parent, index)
        self._spend(1, 1, event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)


def line_of(node: Node) -> int:
    """The 1-based line a node starts on."""
    return node.start_mark.line + 1


def describe(node: Node) -> str:
    """What a node is, in words a policy author knows ("a list", "a string")."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.removeprefix(TAG)
    return {
        "str": "a string",
        "int": "a number",
        "float": "a number",
        "bool": "true/false",
        "null": "nothing (null)",
        "timestamp": "a date",
    }.get(tag, f"a {tag} value")


def suggest(word: str, choices: Iterable[str]) -> str:
    """A `; did you mean `x`?` suffix when a close match exists, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def too_large(path: str, size: int, limit: int, what: str) -> PolicyProblem | None:
    """A problem when a file of `size` bytes is over `limit` (checked before it is parsed).

    The size is said only when it is more than `limit + 1`: a read stopped at `limit + 1`
    bytes (a repository file, bot/service/repository.py) knows the file is larger, not its
    size."""
    if size <= limit:
        return None
    exact = f" ({size} bytes)" if size > limit + 1 else ""
    return PolicyProblem(
        path, 1, f"the {what} is larger than {limit // 1024} kB{exact}: split it up"
    )


def read_limited(path: str, limit: int, what: str) -> tuple[bytes | None, list[PolicyProblem]]:
    """At most `limit` bytes of a file (a huge file is refused without being read whole)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
            size = max(len(data), os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        message = f"cannot read the file: {exc.strerror or exc}"
        return None, [PolicyProblem(path, 1, message)]
    problem = too_large(path, size, limit, what)
    if problem is not None:
        return None, [problem]
    return data, []


def parse_yaml(
    path: str,
    text: str,
    problems: list[PolicyProblem],
    *,
    max_nodes: int = MAX_YAML_NODES,
    max_depth: int = MAX_YAML_DEPTH,
) -> Node | None:
    """Compose one YAML document within the limits; syntax errors and exceeded limits become
    problems at the YAML line."""
    loader = _BoundedLoader(text, max_nodes, max_depth)
    try:
        return loader.get_single_node()
    except YAMLLimitError as exc:
        mark = exc.problem_mark
        problems.append(PolicyProblem(path, mark.line + 1 if mark else 1, str(exc.problem)))
    except RecursionError:  # a limit above should have caught it: still one clear problem
        problems.append(PolicyProblem(path, 1, "the YAML is nested too deeply"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = f"YAML syntax error: {exc.problem or exc.context}"
        if exc.context and exc.problem and exc.context_mark:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        problems.append(PolicyProblem(path, line, message + _escape_hint(exc, text)))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ESC...)
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(char) if char else 0
        problems.append(
            PolicyProblem(path, line, f"YAML error: the character U+{code:04X} is not allowed")
        )
    except yaml.YAMLError as exc:
        problems.append(PolicyProblem(path, 1, f"YAML error: {' '.join(str(exc).split())}"))
    finally:
        loader.dispose()
    return None


_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _escape_hint(exc: yaml.MarkedYAMLError, text: str) -> str:
    """For a backslash YAML does not know in double quotes (a regex like "^feat\\(x\\)"): say
    that single quotes keep backslashes as they are, with the string so written when it can be."""
    if not (
        str(exc.problem or "").startswith("found unknown escape character")
        and exc.context == "while scanning a double-quoted scalar"
        and exc.context_mark is not None
    ):
        return ""
    hint = "; in double quotes a backslash starts an escape: write it in single quotes"
    start = exc.context_mark
    line = text.splitlines()[start.line] if start.line < len(text.splitlines()) else ""
    quoted = _DOUBLE_QUOTED.match(line, start.column)
    # The same text in single quotes, unless an escape in it (\" or \\) would then mean more.
    if quoted is None or any(part in quoted[1] for part in ("'", '\\"', "\\\\")):
        return hint + " (and a ' inside as '')"
    return f"{hint}, '{quoted[1]}'"


@dataclass(frozen=True)
class Entry:
    """One key of a mapping with its nodes (for line numbers)."""

    key: str
    key_node: Node
    node: Node

    @property
    def line(self) -> int:
        return line_of(self.key_node)


@dataclass
class Ctx:
    """Where problems of one file are collected while it is compiled."""

    path: str
    problems: list[PolicyProblem] = field(default_factory=list)
    # The check a policy file decides and the line saying so, once known (even if the rest of
    # the file is broken), so duplicates across files are reported together with other problems.
    check: tuple[str, int] | None = None

    def error(self, where: Node | int, message: str) -> None:
        line = where if isinstance(where, int) else line_of(where)
        self.problems.append(PolicyProblem(self.path, line, message))

    def mapping(self, node: Node, what: str) -> dict[str, Entry] | None:
        """A mapping's entries by key; reports non-mappings, non-string and duplicate keys."""
        if not isinstance(node, MappingNode):
            self.error(node, f"{what} must be a mapping, got {describe(node)}")
            return None
        own_keys = [key for key, _ in node.value if key.tag != TAG + "merge"]
        if len(own_keys) != len(node.value):
            try:
                _CONSTRUCTOR.flatten_mapping(node)  # `<<: *anchor` merge keys
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark
                line = mark.line + 1 if mark else line_of(node)
                self.error(line, f"bad merge key `<<` in {what}: {exc.problem}")
                return None
        entries: dict[str, Entry] = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == TAG + "null":
                self.error(key_node, f"keys of {what} must be strings, got {describe(key_node)}")
                continue
            key = key_node.value
            if key_node in own_keys:
                if key in seen:
                    self.error(key_node, f"duplicate key `{key}` in {what}")
                seen.add(key)
            entries[key] = Entry(key, key_node, value_node)
        return entries

    def known_keys(
        self, entries: dict[str, Entry], allowed: Iterable[str], what: str, hint: str = ""
    ) -> bool:
        """Report every key not in `allowed` (with a suggestion); True when all are known."""
        allowed = list(allowed)
        ok = True
        for entry in entries.values():
            if entry.key not in allowed:
                ok = False
                self.error(
                    entry.key_node,
                    f"unknown key `{entry.key}` in {what}{suggest(entry.key, allowed)}{hint}",
                )
        return ok

    def known(
        self, entries: dict[str, Entry] | None, allowed: Iterable[str], what: str
    ) -> dict[str, Entry] | None:
        """Report unknown keys and keep the known ones, so their problems get reported too.

        None when there is nothing left to check (no mapping, or only unknown keys).
        """
        if entries is None:
            return None
        allowed = list(allowed)
        if self.known_keys(entries, allowed, what):
            return entries
        kept = {key: entry for key, entry in entries.items() if key in allowed}
        return kept or None

    def string(self, node: Node, what: str, *, allow_empty: bool = False) -> str | None:
        """A scalar's raw text (so `yes`, `1.0` and `2026-12-20` stay as written)."""
        if not isinstance(node, ScalarNode) or node.tag == TAG + "null":
            self.error(node, f"{what} must be a string, got {describe(node)}")
            return None
        if not allow_empty and not node.value.strip():
            self.error(node, f"{what} must not be empty")
            return None
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError as exc:  # "\ud800" in YAML: a lone surrogate, not text
            self.error(
                node,
                f"{what} is not valid Unicode text (a lone surrogate "
                f"\\u{ord(node.value[exc.start]):04x} at character {exc.start + 1})",
            )
            return None
        return str(node.value)

    def boolean(self, node: Node, what: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == TAG + "bool":
            return _BOOL_VALUES[node.value.lower()]
        self.error(node, f"{what} must be true or false, got {describe(node)}")
        return None

    def integer(self, node: Node, what: str, *, minimum: int | None = None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == TAG + "int" and ":" not in node.value):
            # A number is named by its value (2.5, 1:30): "got a number" would puzzle.
            numeric = isinstance(node, ScalarNode) and node.tag in (TAG + "int", TAG + "float")
            seen = node.value if numeric else describe(node)
            self.error(node, f"{what} must be a whole number, got {seen}")
            return None
        value = int(_CONSTRUCTOR.construct_yaml_int(node))
        if minimum is not None and value < minimum:
            self.error(node, f"{what} must be at least {minimum}, got {value}")
            return None
        return value

    def string_list(
        self, node: Node, what: str, *, single_ok: bool = False, allow_empty_list: bool = False
    ) -> list[tuple[str, Node]] | None:
        """A list of strings, each with its node; `single_ok` also accepts one bare string."""
        if single_ok and isinstance(node, ScalarNode) and node.tag != TAG + "null":
            value = self.string(node, what)
            return None if value is None else [(value, node)]
        if not isinstance(node, SequenceNode):
            expected = "a string or a list of strings" if single_ok else "a list of strings"
            self.error(node, f"{what} must be {expected}, got {describe(node)}")
            return None
        if not node.value and not allow_empty_list:
            self.error(node, f"{what} must not be an empty list")
            return None
        items: list[tuple[str, Node]] = []
        ok = True
        for item in node.value:
            value = self.string(item, f"each item of {what}")
            if value is None:
                ok = False
            else:
                items.append((value, item))
        return items if ok else None

    def sequence(self, node: Node, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list, got {describe(node)}")
            return None
        if not node.value:
            self.error(node, f"{what} must not be an empty list")
            return None
        return list(node.value)

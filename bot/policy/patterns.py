"""Regexes and globs, compiled once at load time into RE2 (linear time: a policy can't hang us).

File globs follow gitignore rules (pathspec translates them), branch and project globs follow
GitLab's protected-branch wildcards (`*` matches anything, `/` included). Both end up as RE2
programs, so even a glob like `***/***` is matched in linear time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import re2
from yaml.nodes import Node

from bot.policy.nodes import Ctx

try:  # pathspec >= 1.0 names the git-exact flavour GitIgnoreSpecPattern ("gitwildmatch" before)
    from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern as _GitPattern
except ImportError:  # pragma: no cover - pathspec 0.12
    from pathspec.patterns.gitwildmatch import GitWildMatchPattern as _GitPattern

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors are reported as policy problems, not on stderr


def _re2(pattern: str) -> re2._Regexp:
    return re2.compile(pattern, _OPTIONS)


_NO_MATCH = (-1, -1)
_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)


def searcher(compiled: re2._Regexp) -> Callable[[str], bool]:
    """`text -> matched?`, calling RE2 directly when this re2 build allows it.

    The public `search` decodes match spans back to str offsets, which costs more than the match
    itself; we only need a yes/no, evaluated for every changed path. Unpaired surrogates (possible
    in JSON) are replaced instead of raising.
    """
    raw = getattr(compiled, "_regexp", None)
    if raw is None or _UNANCHORED is None or not hasattr(raw, "Match"):
        return lambda text: compiled.search(text.encode(errors="replace").decode()) is not None

    def search(text: str) -> bool:
        data = text.encode(errors="replace")
        return raw.Match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH

    return search


def _re2_error(exc: Exception) -> str:
    message = exc.args[0] if exc.args else str(exc)
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)


# What RE2 answers to the two things it leaves out on purpose (they need backtracking): a
# lookaround, and a backreference (`\1`, `\k<name>`, `\g1`; `(?P=name)` is refused as `(?P`).
_LOOKAROUND = tuple(f"invalid perl operator: {op}" for op in ("(?=", "(?!", "(?<=", "(?<!"))
_BACKREFERENCE = re.compile(r"invalid escape sequence: \\[1-9gk]")
RE2_HINT = " (RE2 syntax: no lookaround or backreferences)"


def _re2_hint(source: str, message: str) -> str:
    """The RE2 hint, where RE2's refusal is one of the features it does not have; other errors
    (an unclosed group, a bad range) are mistakes RE2's own message already names."""
    if message.startswith(_LOOKAROUND) or _BACKREFERENCE.match(message):
        return RE2_HINT
    if message.startswith("invalid perl operator: (?P") and "(?P=" in source:
        return RE2_HINT
    return ""


class Regex:
    """A user regex (searched, not anchored) compiled with RE2."""

    __slots__ = ("search", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.search: Callable[[str], bool] = searcher(_re2(source))

    def __str__(self) -> str:
        return f"`{self.source}`"


def compile_regex(ctx: Ctx, node: Node, what: str) -> Regex | None:
    """Compile a regex from a node; what RE2 rejects (lookaround, backreferences) is an error."""
    source = ctx.string(node, what)
    if source is None:
        return None
    try:
        return Regex(source)
    except re2.error as exc:
        message = _re2_error(exc)
        hint = _re2_hint(source, message)
        ctx.error(node, f"bad regex in {what} `{source}`: {message}{hint}")
        return None


class PathGlobs:
    """Gitignore-style globs on repository paths; with `!pattern`, the last match decides."""

    __slots__ = ("_ordered", "globs", "matches")

    def __init__(self, globs: Sequence[str]) -> None:
        self.globs = tuple(globs)
        translated = [_translate_path_glob(glob) for glob in globs]
        if all(include for _, include in translated):
            combined = _re2("|".join(f"(?:{regex})" for regex, _ in translated))
            self.matches: Callable[[str], bool] = searcher(combined)
        else:
            self._ordered = tuple((searcher(_re2(regex)), include) for regex, include in translated)
            self.matches = self._last_match_decides

    def _last_match_decides(self, path: str) -> bool:
        matched = False
        for search, include in self._ordered:
            if matched != include and search(path):
                matched = include
        return matched

    def __str__(self) -> str:
        return ", ".join(self.globs)


def _translate_path_glob(glob: str) -> tuple[str, bool]:
    """Gitignore glob -> (regex, include). Raises ValueError for what is not a glob."""
    try:
        regex, include = _GitPattern.pattern_to_regex(glob)
    except ValueError as exc:
        raise ValueError(str(exc)) from exc
    if regex is None or include is None:
        if not glob.strip() or glob.lstrip().startswith("#"):
            raise ValueError("an empty glob or a comment matches nothing")
        raise ValueError("not a valid gitignore pattern (an unclosed `[`?)")
    # One combined RE2 program can't repeat a group name; the group only marks directories.
    return regex.replace("(?P<ps_d>/)", "/"), bool(include)


def compile_path_globs(ctx: Ctx, node: Node, what: str) -> PathGlobs | None:
    """A list of gitignore-style globs (one bare string is accepted too)."""
    items = ctx.string_list(node, what, single_ok=True)
    if items is None:
        return None
    ok = True
    for glob, item in items:
        try:
            regex, _ = _translate_path_glob(glob)
            _re2(regex)
        except (ValueError, re2.error) as exc:
            message = _re2_error(exc) if isinstance(exc, re2.error) else str(exc)
            ctx.error(item, f"bad glob in {what} `{glob}`: {message}")
            ok = False
    return PathGlobs([glob for glob, _ in items]) if ok else None


class NameGlobs:
    """Globs on a branch or project name: `*` matches any run of characters (`/` included)."""

    __slots__ = ("globs", "matches")

    def __init__(self, globs: Iterable[str], *, ignore_case: bool = False) -> None:
        self.globs = tuple(globs)
        body = "|".join(_translate_name_glob(glob) for glob in self.globs)
        flags = "(?i)" if ignore_case else ""
        self.matches: Callable[[str], bool] = searcher(_re2(f"{flags}^(?:{body})$"))

    def __str__(self) -> str:
        return ", ".join(self.globs)


def _translate_name_glob(glob: str) -> str:
    parts = []
    for char in glob:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re2.escape(char))
    return "".join(parts)


def compile_name_globs(
    ctx: Ctx, node: Node, what: str, *, ignore_case: bool = False
) -> NameGlobs | None:
    """One glob or a list of globs on names (branches, projects)."""
    items = ctx.string_list(node, what, single_ok=True)
    if items is None:
        return None
    return NameGlobs([glob for glob, _ in items], ignore_case=ignore_case)

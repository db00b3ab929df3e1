"""Text for a terminal: what GitLab, a policy file or a test file says is shown, never obeyed.

Every command that prints (`explain`, `history`, `validate`, `test`, and the `error:` lines) goes
through `printable` (one field) or `TerminalStream` (everything written to stdout/stderr), so an
MR title cannot clear the screen, set the window title, move the cursor, ring the bell, reorder
text with a bidi override, or crash the output with a lone surrogate. Such a character is
shown as its escape (`\\x1b`, `\\u202e`, `\\ud800`) instead.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any, TextIO

# The colour codes the bot itself writes on a terminal (SGR: ESC [ digits ; m), let through
# only where a caller asks for them (`colour=True`), after every field has been made printable.
_OWN_COLOUR = re.compile(r"\x1b\[[0-9;]{0,12}m")
# Controls (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width marks...),
# lone surrogates and the line/paragraph separators. Private-use and unassigned characters
# (icon fonts, emoji newer than Python's tables) do not steer a terminal and are kept.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset({"\u200c", "\u200d"})  # ZWNJ/ZWJ: needed by some scripts and emoji


@lru_cache(maxsize=4096)
def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES and char not in _JOINERS


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: Any, *, newlines: bool = False, colour: bool = False) -> str:
    """`text` with every control, format or surrogate character (and the line/paragraph
    separators) replaced by its escape; `newlines` keeps `\\n`, `colour` keeps the
    bot's own SGR colour codes (so make every field printable before colouring). Idempotent,
    and plain text passes unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    if colour:
        parts = _OWN_COLOUR.split(text)
        codes = _OWN_COLOUR.findall(text)
        out = [printable(parts[0], newlines=newlines)]
        for code, part in zip(codes, parts[1:], strict=True):
            out += [code, printable(part, newlines=newlines)]
        return "".join(out)
    return "".join(_escape(c) if _unsafe(c) and not (newlines and c == "\n") else c for c in text)


class TerminalStream:
    """A text stream that makes everything written to it printable (line breaks kept; the
    bot's own colour codes kept when `colour`) before it reaches the real stream."""

    def __init__(self, stream: TextIO, *, colour: bool = False) -> None:
        self.stream = stream
        self.colour = colour

    def write(self, text: str) -> int:
        self.stream.write(printable(text, newlines=True, colour=self.colour))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

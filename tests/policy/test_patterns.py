"""Regexes and globs: RE2 fast path agrees with the public API; glob semantics as documented."""

from __future__ import annotations

import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.policy.patterns import NameGlobs, PathGlobs, Regex, searcher

PATTERNS = ["^feat", "é+", "(a+)+$", "\\bfix\\b", "^$", "(?i)draft", "[^/]*\\.md$", "x*"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERNS), st.text(max_size=40))
def test_fast_search_agrees_with_re2_public_api(pattern: str, text: str) -> None:
    compiled = re2.compile(pattern)
    safe = text.encode(errors="replace").decode()
    assert searcher(compiled)(text) is (compiled.search(safe) is not None)


def test_unpaired_surrogates_do_not_crash() -> None:
    assert Regex("^a").search("a\ud800") is True


def test_path_globs_match_gitignore_rules() -> None:
    globs = PathGlobs(["docs/**", "*.md", "/Makefile", "build/"])
    assert globs.matches("docs/a/b.txt")
    assert globs.matches("README.md") and globs.matches("src/x/CHANGELOG.md")
    assert globs.matches("Makefile") and not globs.matches("sub/Makefile")
    assert globs.matches("out/build/x.o")
    assert not globs.matches("src/app.py")
    assert not globs.matches("docsx/a")


def test_path_globs_negation() -> None:
    globs = PathGlobs(["src/**", "!src/vendor/**", "src/vendor/ours/**"])
    assert globs.matches("src/app.py")
    assert not globs.matches("src/vendor/lib.py")
    assert globs.matches("src/vendor/ours/x.py")


def test_name_globs() -> None:
    branches = NameGlobs(["main", "release/*", "hotfix-?"])
    assert branches.matches("main") and not branches.matches("main2")
    assert branches.matches("release/1.2/rc") and not branches.matches("xrelease/1")
    assert branches.matches("hotfix-1") and not branches.matches("hotfix-12")
    assert NameGlobs(["a.b"]).matches("a.b") and not NameGlobs(["a.b"]).matches("axb")
    assert NameGlobs(["Acme/*"], ignore_case=True).matches("acme/App")

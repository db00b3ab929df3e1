"""The docs cannot drift from the repo: every link to a section of README.md or
docs/architecture.md (in the docs, in code comments and docstrings) names a heading that exists,
no comment cites a design document the repo does not have, and the deliveries the README's
"Try it in a minute" sends with curl are ones the bot queues."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bot.service.intake import _interpret

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
SOURCES = [
    path
    for folder in ("bot", "tests", "bench")
    for path in sorted((REPO / folder).rglob("*.py"))
    if "__pycache__" not in path.parts
]
DOCS = [README, ARCHITECTURE]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    found, fence = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (match := re.match(r"^#{1,6} (.+)$", line)):
            found.append(match[1].strip())
    return found


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def target_of(source: Path, link: str) -> Path:
    """The file a link points at (`#x` alone: the file the link is in)."""
    name = link.split("#", 1)[0]
    if not name:
        return source
    if source.suffix == ".py":  # comments cite paths from the repository's root
        return REPO / name
    return (source.parent / name).resolve()


# A Markdown link's target, or a section cited by path (`docs/architecture.md#the-snapshot`).
MARKDOWN_LINK = re.compile(r"\]\(((?:[\w./-]*)#[\w-]+)\)")
CITED = re.compile(r"\b((?:\.\./)?(?:README\.md|docs/architecture\.md)#[\w-]+)")


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        cited = {match[1] for match in CITED.finditer(line)}
        if path.suffix == ".md":
            cited |= {match[1] for match in MARKDOWN_LINK.finditer(line)}
        found += [(number, link) for link in sorted(cited)]
    return found


def test_every_section_link_names_a_heading() -> None:
    known = {path: anchors(path) for path in DOCS}
    broken = [
        f"{path.relative_to(REPO)}:{number}: {link}"
        for path in DOCS + SOURCES
        for number, link in links(path)
        if target_of(path, link) in known
        and link.split("#", 1)[1] not in known[target_of(path, link)]
    ]
    assert not broken, "links to sections that do not exist:\n" + "\n".join(broken)


QUOTED = re.compile(r'(README|docs/architecture\.md),?\s+((?:"[^"]+"(?:,?\s*(?:and\s+)?)?)+)')


def test_every_quoted_section_name_is_a_heading() -> None:
    """`(README, "How it decides")` and `(docs/architecture.md, "GitLab facts")` in comments."""
    names = {"README": set(headings(README)), "docs/architecture.md": set(headings(ARCHITECTURE))}
    missing = [
        f"{path.relative_to(REPO)}: {document}, {section!r}"
        for path in SOURCES
        # a citation may wrap across lines
        for document, quoted in QUOTED.findall(" ".join(path.read_text().split()))
        for section in re.findall(r'"([^"]+)"', quoted)
        if section not in names[document]
    ]
    assert not missing, f"citations of sections that do not exist: {missing}"


def test_no_comment_cites_a_design_document_the_repo_lacks() -> None:
    cited = re.compile(r"\b" + "DES" + r"IGN(\.md)?\b")
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for path in [*SOURCES, *DOCS]
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if cited.search(line)
    ]
    assert not found, f"point these at docs/architecture.md or the README instead: {found}"


def try_it_deliveries() -> list[tuple[str, bytes]]:
    section = README.read_text().split("\n## Try it in a minute\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^curl .*?(?:\n  .*)*$", section, flags=re.MULTILINE)
    found = []
    for command in commands:
        event = re.search(r"-H 'X-Gitlab-Event: ([^']+)'", command)
        body = re.search(r"-d '([^']+)'", command)
        assert event and body, command
        found.append((event[1], body[1].encode()))
    return found


def test_the_readme_demo_deliveries_are_queued() -> None:
    deliveries = try_it_deliveries()
    assert {event for event, _ in deliveries} == {"Merge Request Hook", "Note Hook"}
    for event, body in deliveries:
        delivery = asyncio.run(_interpret(body, event, status_check=False))
        assert [str(key) for key, _ in delivery.work] == ["1!2"], (event, delivery.ignored)


def test_the_rooms_table_names_every_module() -> None:
    """docs/architecture.md, "Rooms", says what each file of bot/ owns: a new module (or a
    sub-package) needs its line there, so the map never hides a part of the code."""
    rooms = ARCHITECTURE.read_text().split("\n## Rooms\n", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py|[\w]+/)`", rooms))
    bot = REPO / "bot"
    expected = set()
    for path in bot.rglob("*"):
        relative = path.relative_to(bot)
        if "__pycache__" in relative.parts or path.name == "__init__.py":
            continue
        if len(relative.parts) == 1 and path.suffix == ".py":
            expected.add(f"bot/{path.name}")  # the base and the entry point, by full path
        elif len(relative.parts) == 2 and path.suffix == ".py":
            expected.add(path.name)
        elif len(relative.parts) == 2 and path.is_dir():
            expected.add(f"{path.name}/")
    missing = sorted(expected - named)
    assert not missing, f"add these to the table in docs/architecture.md#rooms: {missing}"

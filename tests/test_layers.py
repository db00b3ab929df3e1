"""The rooms of bot/ and their import direction, checked (docs/architecture.md, "Rooms"):

    base (config, logs, keys, terminal)  ←  policy  ←  gitlab  ←  service  ←  cli

Every room may import the base, which imports no room. `policy` imports no other room and
nothing from aiohttp or gidgetlab; `gitlab` imports of the policy room only its facts model;
`service` imports policy and gitlab; `cli` may import anything. Imports inside
`if TYPE_CHECKING:` count too: a type from a room above is still a dependency on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parent.parent / "bot"
BASE = {"bot", "bot.config", "bot.logs", "bot.keys", "bot.terminal"}
ROOMS = ("policy", "gitlab", "service", "cli")
# What each room may import from bot (besides itself and the base).
ALLOWED: dict[str, tuple[str, ...]] = {
    "base": (),
    "policy": (),
    "gitlab": ("bot.policy.facts",),
    "service": ("bot.policy", "bot.gitlab"),
    "cli": ("bot.policy", "bot.gitlab", "bot.service"),
    "main": ("bot.cli", "bot.service", "bot.policy", "bot.gitlab"),
}
FOREIGN = {"policy": ("aiohttp", "gidgetlab")}


def room_of(module: str) -> str:
    if module in BASE:
        return "base"
    if module == "bot.__main__":
        return "main"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ROOMS:
        return parts[1]
    raise AssertionError(f"{module} belongs to no room: put it in one (or in the base)")


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(BOT.rglob("*.py")):
        rel = path.relative_to(BOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        found.append((name, path))
    return found


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module imported (absolute names), with its line."""
    names: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.module, node.lineno))
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def allowed(room: str, own: str, target: str) -> bool:
    if not target.startswith("bot"):
        return True
    if target == "bot":
        return room == "main"
    if target in BASE - {"bot"} or any(target.startswith(f"{b}.") for b in BASE - {"bot"}):
        return True
    if own != "bot" and (target == own or target.startswith(f"{own}.")):
        return True
    return any(target == a or target.startswith(f"{a}.") for a in ALLOWED[room])


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_no_room_imports_a_room_above_it(module: str, path: Path) -> None:
    room = room_of(module)
    own = "bot" if room in ("base", "main") else f"bot.{room}"
    wrong = [
        f"{path.name}:{line}: {target}"
        for target, line in imports_of(path)
        if not allowed(room, own, target)
        # `from bot.policy import facts` names a submodule: judged by its full name.
        and not any(
            allowed(room, own, f"{target}.{sub}") for sub in ("facts",) if target == "bot.policy"
        )
    ]
    foreign = [
        f"{path.name}:{line}: {target}"
        for target, line in imports_of(path)
        if target.split(".")[0] in FOREIGN.get(room, ())
    ]
    assert not wrong, f"{module} ({room}) imports a room above it: {wrong}"
    assert not foreign, f"{module} ({room}) imports {FOREIGN[room]}: {foreign}"


def test_the_check_catches_a_wrong_import() -> None:
    """The rule itself: a policy module importing the service, or the gitlab room importing
    the policy language, is refused; the base importing nothing of the rooms."""
    assert not allowed("policy", "bot.policy", "bot.service.decide")
    assert not allowed("gitlab", "bot.gitlab", "bot.policy.model")
    assert allowed("gitlab", "bot.gitlab", "bot.policy.facts")
    assert not allowed("base", "bot", "bot.policy.facts")
    assert not allowed("service", "bot.service", "bot.cli.explain")
    assert allowed("cli", "bot.cli", "bot.service.record")

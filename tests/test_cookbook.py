"""The policy cookbook (policies/cookbook/, README "Policy cookbook"): every recipe is valid, passes
its own cases as a user's CI would run them, stays out of the set the service loads, and is
shown in the README exactly as it is in the repository."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from bot.policy import load_policy_dir, run_tests
from bot.policy.loader import is_test_file, policy_files
from tests.processes import run_bot as bot

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "policies"
COOKBOOK = SHIPPED / "cookbook"
README = REPO / "README.md"


def recipes() -> list[Path]:
    return policy_files(COOKBOOK)


def test_the_cookbook_holds_six_to_eight_recipes_each_with_cases() -> None:
    names = [path.stem for path in recipes()]
    assert 6 <= len(names) <= 8, names
    tests = {path.name for path in COOKBOOK.iterdir() if is_test_file(path)}
    assert tests == {f"{name}.test.yaml" for name in names}


def test_validate_and_test_pass_on_the_cookbook() -> None:
    validated = bot("validate", "policies/cookbook")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.splitlines()[-1] == "policies are valid"

    tested = bot("test", "policies/cookbook")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    lines = tested.stdout.splitlines()
    passed = int(lines[-1].split()[0])
    assert lines[-1] == f"{passed} passed, 0 failed"
    assert passed >= 5 * len(recipes())
    checks = {line.split(":")[0].removeprefix("PASS ") for line in lines[:-1]}
    assert checks == {policy.check for policy in load_policy_dir(COOKBOOK).policies}


@pytest.mark.parametrize("recipe", recipes(), ids=lambda path: path.stem)
def test_each_recipe_has_cases_that_catch_a_policy_that_always_passes(
    recipe: Path, tmp_path: Path
) -> None:
    """Each recipe's cases expect something to fail: a policy that requires nothing real
    (`draft: false` only, every scope dropped) must fail some of them."""
    policy = yaml.safe_load(recipe.read_text())
    policy.pop("applies_to", None)
    policy.pop("mode", None)
    policy["require"] = [{"draft": False}]
    (tmp_path / recipe.name).write_text(yaml.safe_dump(policy))
    test_file = recipe.with_name(f"{recipe.stem}.test.yaml")
    (tmp_path / test_file.name).write_text(test_file.read_text())
    out = io.StringIO()
    _, failed = run_tests([str(tmp_path)], out)
    assert failed > 0, out.getvalue()


def test_the_cookbook_is_not_loaded_by_default() -> None:
    """Sub-folders of POLICY_DIR are not read: the service, `validate policies` and
    `test policies` see the shipped set only."""
    shipped = {policy.check for policy in load_policy_dir(SHIPPED).policies}
    cookbook = {policy.check for policy in load_policy_dir(COOKBOOK).policies}
    assert shipped and cookbook and not shipped & cookbook
    out = io.StringIO()
    run_tests([str(SHIPPED)], out)
    ran = {line.split(":")[0].split(" ", 1)[1] for line in out.getvalue().splitlines()[:-1]}
    assert ran == shipped


def test_the_readme_shows_every_recipe_as_it_is() -> None:
    readme = README.read_text()
    section = readme.split("\n## Policy cookbook\n", 1)[1].split("\n## ", 1)[0]
    for recipe in recipes():
        assert recipe.read_text().strip() in section, f"README shows a stale {recipe.name}"
        cases = yaml.safe_load(recipe.with_name(f"{recipe.stem}.test.yaml").read_text())["cases"]
        missing = [case["name"] for case in cases if case["name"] not in section]
        assert not missing, f"README lacks cases of {recipe.name}: {missing}"

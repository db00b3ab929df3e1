"""`python -m bot test` (the policies' test cases) as users run it, in a real subprocess."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import write_policies
from tests.processes import (
    SHIPPED,
    run_bot,
)


def test_test_runs_the_shipped_cases() -> None:
    result = run_bot("test", str(SHIPPED))
    assert result.returncode == 0, result.stdout
    *cases, summary = result.stdout.splitlines()
    assert re.fullmatch(r"(\d+) passed, 0 failed", summary)
    assert int(summary.split()[0]) == len(cases) >= 40
    assert all(line.startswith("PASS ") for line in cases)
    # Every shipped policy has cases.
    tested = {line.split()[1].rstrip(":") for line in cases}
    assert tested == {path.stem for path in SHIPPED.glob("*.yml")}


def test_test_fails_on_a_failing_case(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        {
            "size.yml": "check: size\nrequire:\n  - changed_lines: {max: 10}\n",
            "size.test.yaml": """\
                policy: size
                cases:
                  - name: small
                    mr: {changed_files: [{path: a.py, additions: 3}]}
                    expect: passed
                  - name: wrongly thought small
                    mr: {changed_files: [{path: a.py, additions: 30}]}
                    expect: passed
            """,
        },
    )
    result = run_bot("test", str(folder))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "PASS size: small",
        "FAIL size: wrongly thought small: expected passed, got failed "
        f"(changed_lines: 30 > max 10) [{folder}/size.test.yaml:6]",
        "1 passed, 1 failed",
    ]

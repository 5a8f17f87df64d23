"""Every role has what an Ansible user expects of one: defaults, tasks, ``meta/main.yml`` with platforms,
``meta/argument_specs.yml`` whose options are the role's defaults, a README naming each variable, and a
Molecule scenario that a test runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
# the test that runs a role's scenario: tests/test_role_scenarios.py (its SCENARIOS), else its own
SCENARIO_TESTS = {"worldland_agent": REPO / "tests" / "test_worldland_agent_role.py"}
ROLE_SCENARIOS = REPO / "tests" / "test_role_scenarios.py"


def named(variable: str, readme: str) -> bool:
    """Whether the README names ``variable``: in full, or in a row such as ``x_repo_url``, ``_suites`` (the
    tail replaces the named variable's last word)."""
    if variable in readme:
        return True
    for line in readme.splitlines():
        tails = re.findall(r"`(_[a-z0-9_]+)`", line)
        for full in re.findall(r"`([a-z][a-z0-9_]+)`", line):
            if any(full[: full.rfind("_")] + tail == variable for tail in tails):
                return True
    return False


@pytest.mark.parametrize("role", ROLES)
def test_the_role_has_its_parts_and_a_scenario_that_runs(role: str) -> None:
    root = REPO / "roles" / role
    for part in (
        "defaults/main.yml",
        "tasks/main.yml",
        "meta/main.yml",
        "meta/argument_specs.yml",
        "README.md",
    ):
        assert (root / part).is_file(), f"{role}: {part} is missing"
    meta = yaml.safe_load((root / "meta" / "main.yml").read_text())
    assert meta["galaxy_info"]["platforms"], f"{role}: meta/main.yml names no platforms"
    defaults = yaml.safe_load((root / "defaults" / "main.yml").read_text()) or {}
    options = yaml.safe_load((root / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    options = options.get("options") or {}
    assert set(defaults) <= set(options), (
        f"{role}: defaults without an argument spec: {set(defaults) - set(options)}"
    )
    readme = (root / "README.md").read_text()
    assert [name for name in options if not named(name, readme)] == [], (
        f"{role}: variables its README does not name"
    )
    assert (root / "molecule" / "default" / "molecule.yml").is_file(), f"{role}: no Molecule scenario"
    runner = SCENARIO_TESTS.get(role)
    if runner is None:
        listed = re.search(r"^SCENARIOS = \(([^)]*)\)", ROLE_SCENARIOS.read_text(), re.M)
        assert listed and f'"{role}"' in listed[1], f"{role}: not in {ROLE_SCENARIOS.name}'s SCENARIOS"
    else:
        assert "molecule" in runner.read_text(), f"{role}: {runner.name} does not run its scenario"

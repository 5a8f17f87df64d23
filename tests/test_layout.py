"""The layout's rules that no linter states: each rule's constants have one home, tests share helpers
through ``testkit`` only, and the two writers of a node agree (issue 10)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "worldland").rglob("*.py"))

# Constants that are one rule each: defined (assigned at module level) in exactly one module.
ONE_HOME = {
    "DEFAULT_TOKEN_TTL_S": "worldland/domain/join.py",
    "MIN_TOKEN_TTL_S": "worldland/domain/join.py",
    "MAX_TOKEN_TTL_S": "worldland/domain/join.py",
    "TOKEN_REUSE_MARGIN_S": "worldland/domain/join.py",
    "OFFLINE_TAINT_KEY": "worldland/domain/names.py",
    "OFFLINE_TAINT_EFFECT": "worldland/domain/names.py",
    "MAX_REASON_CHARS": "worldland/domain/lifecycle.py",
    "NODE_STATES": "worldland/domain/lifecycle.py",
    "LIVE_STATES": "worldland/domain/lifecycle.py",
    "GPU_RESOURCE": "worldland/domain/names.py",
    "PROVIDER_ID_RE": "worldland/protocol/ids.py",
    "JOB_ID_RE": "worldland/protocol/ids.py",
    "STALE_AFTER_S": "worldland/protocol/timing.py",
    "HEARTBEAT_INTERVAL_S": "worldland/protocol/timing.py",
}


def module_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name):
                    names.add(leaf.id)
    return names


@pytest.mark.parametrize("name", sorted(ONE_HOME))
def test_each_rule_constant_has_one_home(name: str):
    homes = [str(p.relative_to(REPO)) for p in SOURCES if name in module_level_names(p)]
    assert homes == [ONE_HOME[name]]


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_tests_share_helpers_through_testkit_only():
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        for module in imported_modules(path)
        if module.startswith("tests.test_")
    ]
    assert offenders == []


def test_benchmarks_never_import_the_tests():
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in sorted((REPO / "bench").rglob("*.py"))
        for module in imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == []

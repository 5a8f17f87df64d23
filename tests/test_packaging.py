"""``pip install worldland`` is what a provider machine needs: the wheel without extras runs the agent's
command and none of the control plane's libraries come with it; ``worldland`` then says which extra
to install, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTROL_ONLY = ("kubernetes", "ansible", "prometheus_client", "rich", "ansible_runner")


def run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def provider_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel installed, no extras."""
    root = tmp_path_factory.mktemp("provider")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", REPO)
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("worldland-*.whl")
    venv = root / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    installed = run(venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_wheel_without_extras_brings_no_control_plane_library(provider_venv: Path):
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    found = run(provider_venv / "bin" / "python", "-c", probe, *CONTROL_ONLY)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_the_provider_command_runs_without_the_control_plane(provider_venv: Path):
    result = run(provider_venv / "bin" / "worldland-provider", "--help")
    assert result.returncode == 0, result.stderr
    assert "Register this machine with the WorldLand network" in result.stdout


def test_the_operators_command_names_the_extra_to_install(provider_venv: Path):
    result = run(provider_venv / "bin" / "worldland", "status")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("worldland: the control plane's dependencies are not installed")
    assert "pip install 'worldland[control]'" in line


def test_the_protocol_domain_and_agent_import_in_the_provider_venv(provider_venv: Path):
    modules = ("worldland.protocol.messages", "worldland.domain.registration", "worldland.domain.policy")
    code = f"import {', '.join(modules)}, worldland.agent"
    result = run(provider_venv / "bin" / "python", "-c", code)
    assert result.returncode == 0, result.stderr

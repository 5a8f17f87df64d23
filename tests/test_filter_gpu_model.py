"""The ``worldland.provider.gpu_model`` filter, through Ansible's own plugin loader and templar."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.plugins.loader import filter_loader, init_plugin_loader

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_model():
    init_plugin_loader([str(REPO / ".collections")])
    plugin = filter_loader.get("worldland.provider.gpu_model")
    assert plugin is not None, "the filter is not found through the collection"
    return plugin.j2_function


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("NVIDIA GeForce RTX 4090", "RTX-4090"), ("nvidia geforce rtx 4090", "RTX-4090"),
     ("NVIDIA H100 80GB HBM3", "H100-80GB-HBM3"), ("NVIDIA RTX A6000", "RTX-A6000")],
)  # fmt: skip
def test_the_filter_gives_the_domains_canonical_name(gpu_model, raw: str, canonical: str):
    assert gpu_model(raw) == canonical


@pytest.mark.parametrize("raw", ["NVIDIA GeForce", "***", 42])
def test_a_name_without_a_model_is_a_clear_error(gpu_model, raw):
    with pytest.raises(AnsibleError, match="gpu_model"):
        gpu_model(raw)


def test_ansible_doc_shows_the_filter():
    doc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "filter", "worldland.provider.gpu_model"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert doc.returncode == 0, doc.stderr
    assert "canonical model used everywhere in WorldLand" in " ".join(doc.stdout.split())


def test_the_filter_in_a_playbook(tmp_path: Path):
    playbook = tmp_path / "p.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.assert:\n"
        "        that: \"('NVIDIA A100-SXM4-80GB' | worldland.provider.gpu_model) == 'A100-SXM4-80GB'\"\n"
    )
    ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
    run = subprocess.run(
        [ansible_playbook, "-i", "localhost,", "-c", "local", str(playbook)],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr

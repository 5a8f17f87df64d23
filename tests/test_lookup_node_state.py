"""The ``worldland.provider.node_state`` lookup in a real ``ansible-playbook`` run, against real Redis and
the Kubernetes API test server: each provider's node as the cluster sees it, writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testkit.factories import registration
from testkit.nodes import create_node
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        content: "{{ query('worldland.provider.node_state', *pids) | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def lookup(tmp_path: Path, redis_url: str, keys: Keys, kube_api, pids: list[str]):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "result.json"
    env = {
        **os.environ,
        "WORLDLAND_REDIS_URL": redis_url,
        "WORLDLAND_KEY_PREFIX": keys.prefix,
        "WORLDLAND_KUBECONFIG": str(kube_api.kubeconfig),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    }
    extra = json.dumps({"pids": pids, "out": str(out)})
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         str(tmp_path / "play.yml"), "-e", extra],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False,
    )  # fmt: skip
    return run, (json.loads(out.read_text()) if out.exists() else None)


def test_each_provider_gets_its_node_or_a_node_that_does_not_exist(tmp_path, redis_url, keys, kube_api):
    fleet = Fleet.open(connect(redis_url), keys)
    for pid in ("ns-joined", "ns-new"):
        fleet.register(registration(pid, gpus=2))
    joined = fleet.store.require("ns-joined").node_name
    create_node(kube_api, joined, ready=True, gpus=2)
    run, result = lookup(tmp_path, redis_url, keys, kube_api, ["ns-new", "ns-joined"])
    assert run.returncode == 0, run.stdout + run.stderr
    new, found = result
    assert new == {
        "name": fleet.store.require("ns-new").node_name,
        "exists": False,
        "ready": False,
        "gpu_allocatable": 0,
        "labels": {},
    }
    assert found["name"] == joined and found["exists"] and found["ready"] and found["gpu_allocatable"] == 2


def test_an_unknown_provider_is_one_clear_error(tmp_path, redis_url, keys, kube_api):
    run, result = lookup(tmp_path, redis_url, keys, kube_api, ["ns-nobody"])
    assert run.returncode != 0 and result is None
    assert "node_state: ns-nobody: no such provider, or no node name" in run.stdout + run.stderr

"""The ``worldland.provider.node_state`` lookup in a real ``ansible-playbook`` run, against real Redis and
the Kubernetes API test server: each provider's node as the cluster sees it, writing nothing."""

from __future__ import annotations

from pathlib import Path

from testkit.commands import run_local_play, worldland_env
from testkit.factories import registration
from testkit.nodes import create_node
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

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
    env = worldland_env(redis_url=redis_url, key_prefix=keys.prefix, kubeconfig=kube_api.kubeconfig)
    return run_local_play(tmp_path, PLAYBOOK, {"pids": pids}, env)


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

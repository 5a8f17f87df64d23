"""The ``worldland.provider.provider_node`` action in a real ``ansible-playbook`` run on the controller,
against real Redis and the Kubernetes API test server."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.commands import run_local_play, worldland_env
from testkit.factories import registration
from testkit.nodes import create_node, set_node_status
from worldland.domain.lifecycle import Status
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Record the join and label the node
      worldland.provider.provider_node:
        provider_id: "{{ pid }}"
        require_available: "{{ require_available | bool }}"
      register: advanced
    - ansible.builtin.copy:
        content: "{{ advanced | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Fleet:
    return Fleet.open(connect(redis_url), keys)


def play(tmp_path: Path, redis_url: str, keys: Keys, kube_api, pid: str, require_available: bool = False):
    env = worldland_env(redis_url=redis_url, key_prefix=keys.prefix, kubeconfig=kube_api.kubeconfig)
    return run_local_play(tmp_path, PLAYBOOK, {"pid": pid, "require_available": require_available}, env)


def test_a_joined_node_is_recorded_labelled_and_made_available(tmp_path, fleet, redis_url, keys, kube_api):
    pid = "p-action"
    fleet.register(registration(pid, gpus=2))
    fleet.store.transition(pid, Status.APPROVED)
    node = fleet.store.require(pid).node_name
    create_node(kube_api, node, ready=True, gpus=1)
    run, result = play(tmp_path, redis_url, keys, kube_api, pid)
    assert run.returncode == 0, run.stdout + run.stderr
    assert result["changed"] is True and (result["previous_status"], result["status"]) == (
        "approved",
        "joined",
    )
    assert result["waiting"] == "1 of 2 GPUs allocatable (nvidia.com/gpu)"
    labels = kube_api.server.get_object("nodes", node)["metadata"]["labels"]
    assert labels["worldland.io/rental-status"] == "joined" and labels["worldland.io/provider-id"] == pid
    hard, _ = play(tmp_path, redis_url, keys, kube_api, pid, require_available=True)
    assert hard.returncode != 0 and "is joined: 1 of 2 GPUs allocatable" in hard.stdout
    set_node_status(kube_api, node, ready=True, gpus=2)
    run, result = play(tmp_path, redis_url, keys, kube_api, pid, require_available=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert result["status"] == "available" and fleet.store.require(pid).status is Status.AVAILABLE
    again, result = play(tmp_path, redis_url, keys, kube_api, pid)
    assert again.returncode == 0 and result["changed"] is False  # nothing left to change


def test_a_provider_without_a_node_fails_clearly(tmp_path, fleet, redis_url, keys, kube_api):
    fleet.register(registration("p-nonode"))
    fleet.store.transition("p-nonode", Status.APPROVED)
    run, _ = play(tmp_path, redis_url, keys, kube_api, "p-nonode")
    assert run.returncode != 0 and "does not exist" in run.stdout

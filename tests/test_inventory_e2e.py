"""The inventory plugin end to end: the real ``ansible-inventory`` / ``ansible-playbook`` commands.

Each test writes a ``worldland.yml`` naming the suite's private Redis and the test's key prefix and
runs the command from the repo root with the repo's ``ansible.cfg``, so the plugin is found by its
FQCN through the in-place collection (``.collections/ansible_collections/worldland/provider``).

The last test reaches real SSH hosts (the lab's network-namespace hosts) through this inventory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.factories import registration, registration_dict
from tests.conftest import REPO
from worldland.domain.lifecycle import Status
from worldland.domain.registration import parse_registration
from worldland.protocol.messages import parse_heartbeat
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

BIN = Path(sys.executable).parent
FQCN = "worldland.provider.worldland"
PATH_TO = {
    Status.PENDING: [],
    Status.APPROVED: [Status.APPROVED],
    Status.AVAILABLE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE],
}

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Iterator[Fleet]:
    fleet = Fleet.open(connect(redis_url), keys)
    yield fleet
    fleet.client.close()


def put(fleet: Fleet, provider_id: str, status: Status, **kwargs: Any) -> str:
    fleet.register(registration(provider_id, **kwargs))
    for step in PATH_TO[status]:
        fleet.store.transition(provider_id, step)
    return fleet.store.require(provider_id).node_name


@pytest.fixture
def write_config(tmp_path: Path, redis_url: str, keys: Keys) -> Callable[..., Path]:
    def write(name: str = "worldland.yml", **options: Any) -> Path:
        path = tmp_path / name
        data = {"plugin": FQCN, "redis_url": redis_url, "key_prefix": keys.prefix, **options}
        path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
        return path

    return write


@pytest.fixture
def run(tmp_path: Path) -> Run:
    def run(command: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "WORLDLAND_"))},
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            **(env or {}),
        }
        return subprocess.run(
            [str(BIN / command), *args],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def unsafe(value: Any) -> Any:
    """``--list`` output with its ``{"__ansible_unsafe": ...}`` markers removed."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    return value


def test_list_graph_and_host(run: Run, write_config: Callable[..., Path], fleet: Fleet):
    pending = put(fleet, "p-pending", Status.PENDING)
    approved = put(fleet, "p-approved", Status.APPROVED, gpu_name="NVIDIA H100 80GB HBM3", gpus=8)
    available = put(fleet, "p-available", Status.AVAILABLE)
    put(fleet, "p-rejected", Status.PENDING)
    fleet.reject("p-rejected", "no GPUs found")
    fleet.heartbeats.record(
        parse_heartbeat(json.dumps({"provider_id": "p-available", "status": "available"})),
        now=1_700_000_000.0,
    )
    config = write_config()

    listed = run("ansible-inventory", "-i", str(config), "--list")
    assert listed.returncode == 0, listed.stderr
    assert "WARNING" not in listed.stderr, listed.stderr
    data = json.loads(listed.stdout)
    hostvars = data["_meta"]["hostvars"]
    assert set(hostvars) == {pending, approved, available}
    assert data["approved"]["hosts"] == [approved]
    assert data["pending"]["hosts"] == [pending]
    assert data["available"]["hosts"] == [available]
    assert data["gpu_H100_80GB_HBM3"]["hosts"] == [approved]
    assert sorted(data["gpu_RTX_4090"]["hosts"]) == sorted([pending, available])
    # Provider strings come out marked untrusted; numbers stay numbers.
    assert hostvars[approved]["worldland_spec"]["os"] == {"__ansible_unsafe": "Ubuntu 22.04.4 LTS"}
    plain = unsafe(hostvars[available])
    assert plain["ansible_host"] == "123.45.67.89"
    assert plain["worldland_last_heartbeat"] == "2023-11-14T22:13:20Z"
    assert plain["worldland_capacity"]["gpus"]["RTX-4090"]["total"] == 4
    assert plain["worldland_labels"]["worldland.io/gpu-model"] == "RTX-4090"

    graph = run("ansible-inventory", "-i", str(config), "--graph")
    assert graph.returncode == 0, graph.stderr
    lines = graph.stdout.splitlines()
    for group in ("@pending:", "@approved:", "@joined:", "@available:", "@offline:", "@gpu_RTX_4090:"):
        assert any(line.strip(" |-") == group for line in lines), (group, graph.stdout)
    assert "@rejected:" not in graph.stdout
    assert approved in graph.stdout

    host = run("ansible-inventory", "-i", str(config), "--host", approved)
    assert host.returncode == 0, host.stderr
    one = json.loads(host.stdout)
    assert one["worldland_provider_id"] == "p-approved"
    assert one["worldland_gpu_models"] == ["H100-80GB-HBM3"]
    assert one["worldland_status"] == "approved"


def test_redis_url_and_key_prefix_from_the_environment(
    run: Run, tmp_path: Path, fleet: Fleet, redis_url: str, keys: Keys
):
    name = put(fleet, "p-1", Status.APPROVED)
    config = tmp_path / "lab.worldland.yaml"
    config.write_text(f"plugin: {FQCN}\n")

    result = run(
        "ansible-inventory",
        "-i",
        str(config),
        "--graph",
        env={"WORLDLAND_REDIS_URL": redis_url, "WORLDLAND_KEY_PREFIX": keys.prefix},
    )

    assert result.returncode == 0, result.stderr
    assert name in result.stdout


def test_redis_unreachable_is_one_clear_error(run: Run, write_config: Callable[..., Path]):
    config = write_config(redis_url="redis://ops:s3cret@127.0.0.1:1/0", timeout=2.0)

    # The repo's ansible.cfg sets any_unparsed_is_failed: the run fails instead of an empty inventory.
    result = run("ansible-inventory", "-i", str(config), "--list")
    lenient = run(
        "ansible-inventory",
        "-i",
        str(config),
        "--list",
        env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "0"},
    )

    expected = "cannot read the providers from Redis at redis://ops:***@127.0.0.1:1/0"
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert expected in lenient.stderr
    assert json.loads(lenient.stdout)["_meta"]["hostvars"] == {}


def test_a_broken_config_is_one_clear_error(run: Run, tmp_path: Path):
    config = tmp_path / "worldland.yml"
    config.write_text(f"plugin: {FQCN}\nstatuses: [approved, exploded]\n")

    result = run("ansible-inventory", "-i", str(config), "--graph")

    assert "Invalid value" in result.stderr and "statuses" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cache_and_flush_cache(run: Run, write_config: Callable[..., Path], fleet: Fleet, tmp_path: Path):
    cache = tmp_path / "cache"
    first = put(fleet, "p-1", Status.APPROVED)
    config = write_config(cache=True, cache_plugin="ansible.builtin.jsonfile", cache_connection=str(cache))

    assert first in run("ansible-inventory", "-i", str(config), "--graph").stdout
    second = put(fleet, "p-2", Status.APPROVED)
    cached = run("ansible-inventory", "-i", str(config), "--graph").stdout
    assert first in cached and second not in cached
    flushed = run("ansible-inventory", "-i", str(config), "--graph", "--flush-cache").stdout
    assert first in flushed and second in flushed
    # The cache holds what the inventory shows, and never a token.
    (entry,) = cache.iterdir()
    assert "token" not in entry.read_text().lower()


def test_a_playbook_prints_hostile_provider_strings_and_never_renders_them(
    run: Run, write_config: Callable[..., Path], fleet: Fleet, keys: Keys, tmp_path: Path
):
    marker = tmp_path / "rendered"
    payload = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    name = put(fleet, "p-evil", Status.APPROVED, gpu_name=f"NVIDIA {payload}")
    record = fleet.store.require("p-evil")
    data = json.loads(record.registration_json)
    data["spec"]["os"] = payload  # free text in the spec, as a provider could send it
    fleet.client.hset(keys.provider("p-evil"), "registration", json.dumps(data))
    config = write_config(compose={"gpu_name": "worldland_spec.gpus[0].name"})
    playbook = tmp_path / "show.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Show what providers sent",
                    "hosts": "approved",
                    "gather_facts": False,
                    # The hosts are remote machines: nothing here may reach them.
                    "connection": "local",
                    "tasks": [
                        {"name": "os", "ansible.builtin.debug": {"msg": "os={{ worldland_spec.os }}"}},
                        {"name": "gpu", "ansible.builtin.debug": {"msg": "gpu={{ gpu_name }}"}},
                        {
                            "name": "model",
                            "ansible.builtin.debug": {"msg": "model={{ worldland_spec.gpus[0]['name'] }}"},
                        },
                    ],
                }
            ]
        )
    )

    result = run("ansible-playbook", "-i", str(config), str(playbook))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: [{name}]" in result.stdout
    literal = json.dumps(f"os={payload}")[1:-1]  # as the debug callback prints it
    assert literal in result.stdout, result.stdout
    assert json.dumps(f"gpu=NVIDIA {payload}")[1:-1] in result.stdout
    assert json.dumps(f"model=NVIDIA {payload}")[1:-1] in result.stdout
    assert not marker.exists()


def test_ping_through_the_dynamic_inventory_to_lab_hosts(lab, fleet: Fleet, redis_url, keys, tmp_path, run):
    """Providers registered through the core, listed by the plugin, reached over real SSH."""
    view = lab(n=3)
    expected = []
    for host in view.hosts:
        pid = f"lab-{host.name}"
        data = registration_dict(pid, hostname=host.name, public_ip=host.address)
        fleet.register(parse_registration(json.dumps(data), allow_private_ips=True))
        fleet.store.transition(pid, Status.APPROVED)
        expected.append(fleet.store.require(pid).node_name)
    fleet.register(registration("elsewhere"))  # pending: not in the approved group, never contacted
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "worldland.yml").write_text(
        yaml.safe_dump({"plugin": FQCN, "redis_url": redis_url, "key_prefix": keys.prefix})
    )
    # How to reach the lab (our values, not the providers'): key, user, known_hosts of the lab.
    ssh = {k: v for k, v in view.hosts[0].inventory_vars.items() if k not in ("ansible_host", "ansible_port")}
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(ssh))
    result = run("ansible", "approved", "-i", str(inventory), "-m", "ansible.builtin.ping", "--one-line")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in expected:
        assert f'{name} | SUCCESS => {{"changed": false,"ping": "pong"}}' in result.stdout, result.stdout
    assert "elsewhere" not in result.stdout

"""The inventory plugin in process, modelled on community.general's ``test_opennebula.py``.

A real ``InventoryManager`` loads the plugin by its FQCN from the in-place collection, with the
config served by a ``DictDataLoader``; the plugin reads a real Redis (the suite's private
``redis-server``, a fresh key prefix per test) seeded through the domain core.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from ansible import constants as C
from ansible._internal._datatag._tags import Origin
from ansible.errors import AnsibleError, AnsibleFileNotFound, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.inventory.manager import InventoryManager
from ansible.module_utils.common.text.converters import to_native
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.cache import CachePluginAdjudicator
from ansible.plugins.loader import init_plugin_loader, inventory_loader
from ansible.template import Templar, is_trusted_as_template, trust_as_template
from ansible.utils.display import Display

from testkit.factories import registration
from tests.conftest import REPO
from worldland.domain.lifecycle import Status
from worldland.protocol.messages import parse_heartbeat
from worldland.state import providers as store_module
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

FQCN = "worldland.provider.worldland"
CONFIG = "/fake/inventory/worldland.yml"
VAR_NAMES = {
    "ansible_host",
    "worldland_provider_id",
    "worldland_status",
    "worldland_wallet_addr",
    "worldland_node_name",
    "worldland_gpu_models",
    "worldland_spec",
    "worldland_capacity",
    "worldland_labels",
    "worldland_last_heartbeat",
}
PATH_TO = {
    Status.PENDING: [],
    Status.APPROVED: [Status.APPROVED],
    Status.JOINED: [Status.APPROVED, Status.JOINED],
    Status.AVAILABLE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE],
    Status.OFFLINE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE, Status.OFFLINE],
    Status.REJECTED: [Status.REJECTED],
}


class DictDataLoader(DataLoader):
    """A DataLoader that serves some files from a dict (in the manner of ansible-core's test loader)."""

    def __init__(self, files: dict[str, str]) -> None:
        super().__init__()
        self._files = files

    def _get_file_contents(self, file_name: str) -> tuple[bytes, bool]:
        path = self.path_dwim(file_name)
        if path in self._files:
            return Origin(path=path).tag(self._files[path].encode()), True
        if os.path.exists(path):
            return super()._get_file_contents(file_name)
        raise AnsibleFileNotFound(file_name=path)

    def path_exists(self, path: str) -> bool:
        return path in self._files or super().path_exists(path)

    def is_file(self, path: str) -> bool:
        return path in self._files or super().is_file(path)

    def is_directory(self, path: str) -> bool:
        return path not in self._files and super().is_directory(path)


@pytest.fixture(scope="module", autouse=True)
def _collection_loader() -> None:
    # What the ansible CLIs do at start: makes worldland.provider (the repo, via .collections) importable.
    init_plugin_loader([str(REPO / ".collections")])


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Iterator[Fleet]:
    fleet = Fleet.open(connect(redis_url), keys)
    yield fleet
    fleet.client.close()


@pytest.fixture
def fake_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Config files that exist only for the plugin's ``verify_file`` (os.path.exists/os.access)."""
    files: dict[str, str] = {}
    real_exists, real_access = os.path.exists, os.access
    monkeypatch.setattr(os.path, "exists", lambda p: to_native(p) in files or real_exists(p))
    monkeypatch.setattr(
        os, "access", lambda p, mode, *a, **k: to_native(p) in files or real_access(p, mode, *a, **k)
    )
    monkeypatch.setattr(C, "INVENTORY_ENABLED", [FQCN])
    return files


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = Display.warning

    def warning(self: Display, msg: str, *args: Any, **kwargs: Any) -> None:
        seen.append(msg)
        real(self, msg, *args, **kwargs)

    monkeypatch.setattr(Display, "warning", warning)
    return seen


def config(redis_url: str, keys: Keys, **options: Any) -> str:
    return yaml.safe_dump(
        {"plugin": FQCN, "redis_url": redis_url, "key_prefix": keys.prefix, "timeout": 2.0, **options}
    )


@pytest.fixture
def load(fake_files: dict[str, str], redis_url: str, keys: Keys) -> Callable[..., InventoryManager]:
    """``load(flush=False, path=CONFIG, **options)``: an InventoryManager over a worldland config.

    ``flush=True`` is what ``--flush-cache`` does: the manager parses with ``cache=False``.
    """

    def load(*, flush: bool = False, path: str = CONFIG, **options: Any) -> InventoryManager:
        fake_files[path] = config(redis_url, keys, **options)
        return InventoryManager(loader=DictDataLoader(fake_files), sources=path, cache=not flush)

    return load


def parse_directly(fake_files: dict[str, str], text: str, path: str = CONFIG) -> InventoryData:
    """Run the plugin's parse() itself, so its exceptions reach the test (the manager makes them warnings)."""
    fake_files[path] = text
    plugin = inventory_loader.get(FQCN)
    inventory = InventoryData()
    plugin.parse(inventory, DictDataLoader(fake_files), path, cache=False)
    return inventory


def put(fleet: Fleet, provider_id: str, status: Status, **kwargs: Any) -> str:
    """Register through the core, walk to ``status`` along legal transitions; returns the node name."""
    fleet.register(registration(provider_id, **kwargs))
    for step in PATH_TO[status]:
        fleet.store.transition(provider_id, step)
    return fleet.store.require(provider_id).node_name


def members(im: InventoryManager, group: str) -> set[str]:
    return {h.name for h in im.groups[group].get_hosts()} if group in im.groups else set()


def hostvars(im: InventoryManager, name: str) -> dict[str, Any]:
    return im.get_host(name).get_vars()


# -- verify_file ---------------------------------------------------------------------------------


def test_verify_file_accepts_only_existing_worldland_configs(tmp_path: Path):
    plugin = inventory_loader.get(FQCN)
    for name in ("worldland.yml", "worldland.yaml", "prod.worldland.yml", "lab-worldland.yaml"):
        (tmp_path / name).write_text(f"plugin: {FQCN}\n")
        assert plugin.verify_file(str(tmp_path / name)) is True, name
    for name in ("hosts.yml", "worldland.yml.bak", "worldland.json", "inventory.ini"):
        (tmp_path / name).write_text(f"plugin: {FQCN}\n")
        assert plugin.verify_file(str(tmp_path / name)) is False, name
    assert plugin.verify_file(str(tmp_path / "missing.worldland.yml")) is False


# -- hosts, groups, vars ---------------------------------------------------------------------------


def test_hosts_groups_and_host_vars(load: Callable[..., InventoryManager], fleet: Fleet):
    pending = put(fleet, "p-pending", Status.PENDING, public_ip="123.45.67.91")
    approved = put(fleet, "p-approved", Status.APPROVED, gpu_name="NVIDIA H100 80GB HBM3", gpus=8)
    available = put(fleet, "p-available", Status.AVAILABLE)
    offline = put(fleet, "p-offline", Status.OFFLINE, gpu_name="NVIDIA RTX A6000", gpus=2)
    rejected = put(fleet, "p-rejected", Status.REJECTED)
    fleet.heartbeats.record(
        parse_heartbeat(json.dumps({"provider_id": "p-available", "status": "available"})),
        now=1_700_000_000.0,
    )

    im = load()

    assert set(im.hosts) == {pending, approved, available, offline}
    assert rejected not in im.hosts
    assert members(im, "pending") == {pending}
    assert members(im, "approved") == {approved}
    assert members(im, "available") == {available}
    assert members(im, "offline") == {offline}
    assert "joined" in im.groups and members(im, "joined") == set()  # every listed status has its group
    assert "rejected" not in im.groups
    assert members(im, "gpu_RTX_4090") == {pending, available}
    assert members(im, "gpu_H100_80GB_HBM3") == {approved}
    assert members(im, "gpu_RTX_A6000") == {offline}

    v = hostvars(im, available)
    assert set(v) >= VAR_NAMES
    assert not {k for k in v if "token" in k.lower()}
    assert v["ansible_host"] == "123.45.67.89"
    assert v["worldland_provider_id"] == "p-available"
    assert v["worldland_status"] == "available"
    assert v["worldland_wallet_addr"] == registration("p-available").wallet_addr
    assert v["worldland_node_name"] == available
    assert v["worldland_gpu_models"] == ["RTX-4090"]
    assert v["worldland_spec"] == registration("p-available").spec.model_dump(mode="json", exclude_none=True)
    assert v["worldland_capacity"]["gpus"] == {
        "RTX-4090": {"total": 4, "available": 4, "in_use": 0, "mining": 0}
    }
    assert v["worldland_capacity"]["cpu"]["total"] == 32
    assert v["worldland_labels"] == {
        "worldland.io/rental-type": "gpu",
        "worldland.io/provider-id": "p-available",
        "worldland.io/gpu-model": "RTX-4090",
        "worldland.io/rental-status": "available",
    }
    assert v["worldland_last_heartbeat"] == "2023-11-14T22:13:20Z"
    assert hostvars(im, pending)["ansible_host"] == "123.45.67.91"
    assert hostvars(im, pending)["worldland_last_heartbeat"] is None
    assert hostvars(im, offline)["worldland_labels"]["worldland.io/rental-status"] == "offline"
    assert hostvars(im, approved)["worldland_capacity"]["gpus"]["H100-80GB-HBM3"]["total"] == 8


def test_statuses_option_selects_the_providers(load: Callable[..., InventoryManager], fleet: Fleet):
    approved = put(fleet, "p-a", Status.APPROVED)
    put(fleet, "p-b", Status.AVAILABLE)
    rejected = put(fleet, "p-c", Status.REJECTED)

    im = load(statuses=["approved"])
    assert set(im.hosts) == {approved}
    assert "available" not in im.groups

    im = load(statuses=["approved", "rejected"])
    assert set(im.hosts) == {approved, rejected}
    assert members(im, "rejected") == {rejected}


def test_never_a_token(load: Callable[..., InventoryManager], fleet: Fleet, keys: Keys):
    name = put(fleet, "p-1", Status.APPROVED)
    # Whatever the listener keeps on the record, the inventory copies fields one by one, never the hash.
    fleet.client.hset(keys.provider("p-1"), mapping={"join_token": "abcdef.0123456789abcdef"})

    im = load()

    assert "0123456789abcdef" not in json.dumps(hostvars(im, name), default=str)


def test_an_empty_fleet_gives_the_status_groups_and_no_hosts(load: Callable[..., InventoryManager]):
    im = load()
    assert not im.hosts
    assert {"pending", "approved", "joined", "available", "offline"} <= set(im.groups)


# -- hostile data ----------------------------------------------------------------------------------


def test_provider_strings_are_unsafe_and_never_rendered(
    load: Callable[..., InventoryManager], fleet: Fleet, keys: Keys, tmp_path: Path
):
    marker = tmp_path / "rendered"
    payload = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    name = put(fleet, "p-evil", Status.APPROVED, gpu_name=f"NVIDIA {payload}")
    # The OS string is free text in the spec: plant the payload there too, as a provider could.
    record = fleet.store.require("p-evil")
    data = json.loads(record.registration_json)
    data["spec"]["os"] = payload
    fleet.client.hset(keys.provider("p-evil"), "registration", json.dumps(data))

    im = load(
        compose={"gpu_name": "worldland_spec.gpus[0].name", "os_name": "worldland_spec.os"},
        groups={"hostile": "worldland_spec.os is search('lookup')"},
        keyed_groups=[{"key": "worldland_spec.os", "prefix": "os"}],
    )

    assert not marker.exists()
    v = hostvars(im, name)
    assert v["worldland_spec"]["os"] == payload
    assert v["worldland_spec"]["gpus"][0]["name"] == f"NVIDIA {payload}"
    assert v["gpu_name"] == f"NVIDIA {payload}"  # compose copies it as data
    assert v["os_name"] == payload
    assert members(im, "hostile") == {name}
    assert any(g.startswith("os_") for g in im.groups)
    for value in (v["worldland_spec"]["os"], v["worldland_spec"]["gpus"][0]["name"], v["gpu_name"]):
        assert not is_trusted_as_template(value)
    templar = Templar(loader=DataLoader(), variables=v)
    assert templar.template(trust_as_template("{{ worldland_spec.os }}")) == payload
    assert templar.template(trust_as_template("{{ gpu_name }}")) == f"NVIDIA {payload}"
    assert not marker.exists()


def test_unsafe_untrusts_tagged_strings_and_leaves_plain_data_alone():
    unsafe = sys.modules[type(inventory_loader.get(FQCN)).__module__].unsafe
    plain = {"os": "Ubuntu", "gpus": [{"name": "RTX", "memory_mb": 24576}], "ok": True, "none": None}
    assert unsafe(plain) is plain  # what JSON gives is already untrusted: no copy, no cost

    trusted = trust_as_template("{{ lookup('pipe', 'id') }}")
    assert is_trusted_as_template(trusted)
    marked = unsafe({"spec": {"os": trusted, "gpus": [{"name": trusted}], "pair": (trusted, 1)}})
    assert marked == {"spec": {"os": trusted, "gpus": [{"name": trusted}], "pair": (trusted, 1)}}
    assert not is_trusted_as_template(marked["spec"]["os"])
    assert not is_trusted_as_template(marked["spec"]["gpus"][0]["name"])
    assert not is_trusted_as_template(marked["spec"]["pair"][0])


# -- constructed -----------------------------------------------------------------------------------


def test_compose_groups_and_keyed_groups(load: Callable[..., InventoryManager], fleet: Fleet):
    big = put(fleet, "p-big", Status.AVAILABLE, gpu_name="NVIDIA H100 80GB HBM3", gpus=8)
    small = put(fleet, "p-small", Status.APPROVED, gpus=1)

    im = load(
        compose={"gpu_count": "worldland_capacity.gpus.values() | map(attribute='total') | sum"},
        groups={"big_rigs": "gpu_count >= 8", "onboarding": "worldland_status == 'approved'"},
        keyed_groups=[
            {"key": "worldland_spec.architecture", "prefix": "arch"},
            {"key": "worldland_gpu_models", "prefix": "model"},
        ],
    )

    assert hostvars(im, big)["gpu_count"] == 8
    assert hostvars(im, small)["gpu_count"] == 1
    assert members(im, "big_rigs") == {big}
    assert members(im, "onboarding") == {small}
    assert members(im, "arch_amd64") == {big, small}  # the agent sent x86_64: normalised
    assert members(im, "model_H100_80GB_HBM3") == {big}
    assert members(im, "model_RTX_4090") == {small}


@pytest.mark.parametrize(
    "options",
    [
        {"compose": {"x": "no_such_var.attr"}},
        {"groups": {"g": "no_such_var.attr"}},
        {"keyed_groups": [{"key": "no_such_var.attr", "prefix": "k"}]},
    ],
    ids=["compose", "groups", "keyed_groups"],
)
def test_strict_applies_to_compose_groups_and_keyed_groups(
    fake_files: dict[str, str], redis_url: str, keys: Keys, fleet: Fleet, options: dict[str, Any]
):
    name = put(fleet, "p-1", Status.APPROVED)

    lenient = parse_directly(fake_files, config(redis_url, keys, strict=False, **options))
    assert set(lenient.hosts) == {name}
    assert "x" not in lenient.hosts[name].vars
    assert not {"g", "k_"} & set(lenient.groups)

    with pytest.raises(AnsibleError, match="no_such_var"):
        parse_directly(fake_files, config(redis_url, keys, strict=True, **options))


# -- reading: batched, tolerant, clear errors --------------------------------------------------------


class RoundTrips:
    """Counts what the clients send: plain commands, pipeline executions, and commands in pipelines."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[str] = []
        self.pipelines: list[int] = []
        plain, execute = redis.Redis.execute_command, redis.client.Pipeline.execute
        counter = self

        def execute_command(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
            counter.commands.append(str(args[0]))
            return plain(self, *args, **kwargs)

        def pipeline_execute(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
            counter.pipelines.append(len(self.command_stack))
            return execute(self, *args, **kwargs)

        monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
        monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline_execute)

    @property
    def round_trips(self) -> int:
        return len(self.commands) + len(self.pipelines)

    def reset(self) -> None:
        self.commands.clear()
        self.pipelines.clear()


def test_one_batched_fetch_whatever_the_number_of_hosts(
    load: Callable[..., InventoryManager], fleet: Fleet, monkeypatch: pytest.MonkeyPatch
):
    for i in range(12):
        put(fleet, f"p-{i:02d}", Status.AVAILABLE)
    trips = RoundTrips(monkeypatch)

    im = load()
    assert len(im.hosts) == 12
    small = trips.round_trips
    assert small <= 4, (trips.commands, trips.pipelines)  # ids, records, ledgers, heartbeat times
    assert sum(trips.pipelines) + len(trips.commands) == 2 * 12 + 2  # two reads per host, two overall

    trips.reset()
    for i in range(12, 36):
        put(fleet, f"p-{i:02d}", Status.AVAILABLE)
    trips.reset()
    im = load()
    assert len(im.hosts) == 36
    assert trips.round_trips == small  # three times the hosts, the same round trips

    trips.reset()
    monkeypatch.setattr(store_module, "LIST_CHUNK", 10)  # records come in chunks, never one by one
    assert len(load().hosts) == 36
    assert trips.round_trips == small - 1 + 4


def test_a_record_that_does_not_decode_is_skipped_with_a_warning(
    load: Callable[..., InventoryManager], fleet: Fleet, keys: Keys, warnings: list[str]
):
    good = put(fleet, "p-good", Status.APPROVED)
    put(fleet, "p-json", Status.APPROVED)
    put(fleet, "p-status", Status.APPROVED)
    put(fleet, "p-field", Status.APPROVED)
    fleet.client.hset(keys.provider("p-json"), "registration", "{not json")
    fleet.client.hset(keys.provider("p-status"), "status", "exploded")
    fleet.client.hdel(keys.provider("p-field"), "wallet_addr")

    im = load()

    assert set(im.hosts) == {good}
    for pid in ("p-json", "p-status", "p-field"):
        assert any(repr(pid) in w and "does not decode" in w for w in warnings), (pid, warnings)
    assert any("'wallet_addr' is missing" in w for w in warnings)


def test_redis_unreachable_is_one_clear_parser_error(fake_files: dict[str, str], keys: Keys):
    with pytest.raises(AnsibleParserError) as caught:
        parse_directly(fake_files, config("redis://user:hunter2@127.0.0.1:1/0", keys))
    message = str(caught.value)
    assert "cannot read the providers from Redis at redis://user:***@127.0.0.1:1/0" in message
    assert "hunter2" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    with pytest.raises(AnsibleParserError, match="bad redis_url"):
        parse_directly(fake_files, config("http://127.0.0.1:1/", keys))


@pytest.mark.parametrize("prefix", ["", "provider:"])
def test_a_key_prefix_that_reaches_the_agent_streams_is_one_clear_parser_error(
    fake_files: dict[str, str], redis_url: str, prefix: str
):
    text = yaml.safe_dump({"plugin": FQCN, "redis_url": redis_url, "key_prefix": prefix})
    with pytest.raises(AnsibleParserError, match="key_prefix"):
        parse_directly(fake_files, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plugin: worldland.provider.worldland\nstatuses: [\n", "YAML"),
        ("plugin: worldland.provider.worldland\nstatuses: [exploded]\n", "statuses"),
        ("plugin: worldland.provider.worldland\ntimeout: soon\n", "timeout"),
        ("", "empty"),
        ("plugin: someone.else.plugin\n", "Incorrect plugin name"),
    ],
    ids=["yaml", "status", "type", "empty", "other-plugin"],
)
def test_a_broken_config_is_one_clear_parser_error(fake_files: dict[str, str], text: str, expected: str):
    with pytest.raises(AnsibleParserError, match=expected):
        parse_directly(fake_files, text)


# -- cache -----------------------------------------------------------------------------------------


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "inventory-cache"


def cached(cache_dir: Path, **more: Any) -> dict[str, Any]:
    return {
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(cache_dir),
        **more,
    }


def test_cache_is_read_until_flushed_and_then_refreshed(
    load: Callable[..., InventoryManager], fleet: Fleet, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    first = put(fleet, "p-1", Status.APPROVED)
    assert set(load(**cached(cache_dir)).hosts) == {first}
    assert len(list(cache_dir.iterdir())) == 1
    second = put(fleet, "p-2", Status.APPROVED)

    trips = RoundTrips(monkeypatch)
    assert set(load(**cached(cache_dir)).hosts) == {first}  # from the cache
    assert trips.round_trips == 0

    assert set(load(flush=True, **cached(cache_dir)).hosts) == {first, second}  # --flush-cache
    assert trips.round_trips > 0
    trips.reset()
    assert set(load(**cached(cache_dir)).hosts) == {first, second}  # the refreshed entry
    assert trips.round_trips == 0


def test_a_cached_entry_is_not_rewritten(
    load: Callable[..., InventoryManager], fleet: Fleet, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    put(fleet, "p-1", Status.APPROVED)
    load(**cached(cache_dir))
    (entry,) = cache_dir.iterdir()
    old = time.time() - 600
    os.utime(entry, (old, old))
    content = entry.read_bytes()
    writes: list[str] = []
    real_setitem = CachePluginAdjudicator.__setitem__

    def setitem(self: CachePluginAdjudicator, key: str, value: Any) -> None:
        writes.append(key)
        real_setitem(self, key, value)

    monkeypatch.setattr(CachePluginAdjudicator, "__setitem__", setitem)

    load(**cached(cache_dir))

    assert writes == []  # the plugin does not even hand the entry back to the cache
    assert entry.stat().st_mtime == pytest.approx(old)  # a rewrite would restart its timeout
    assert entry.read_bytes() == content
    load(flush=True, **cached(cache_dir))
    assert len(writes) == 1  # while a refresh does write it


def test_one_cache_key_per_source(
    load: Callable[..., InventoryManager],
    fleet: Fleet,
    cache_dir: Path,
    fake_files: dict[str, str],
    redis_url: str,
):
    one = put(fleet, "p-1", Status.APPROVED)
    other_keys = Keys(f"{fleet.keys.prefix}other:")
    other_fleet = Fleet.open(fleet.client, other_keys)
    two = put(other_fleet, "p-2", Status.APPROVED)
    other_path = "/fake/inventory/other.worldland.yml"
    fake_files[other_path] = config(redis_url, other_keys, **cached(cache_dir))

    assert set(load(**cached(cache_dir)).hosts) == {one}
    im = InventoryManager(loader=DictDataLoader(fake_files), sources=other_path)
    assert set(im.hosts) == {two}
    assert len(list(cache_dir.iterdir())) == 2
    assert set(load(**cached(cache_dir)).hosts) == {one}


def test_a_changed_config_does_not_use_the_old_entry(
    load: Callable[..., InventoryManager], fleet: Fleet, cache_dir: Path
):
    approved = put(fleet, "p-1", Status.APPROVED)
    available = put(fleet, "p-2", Status.AVAILABLE)
    assert set(load(**cached(cache_dir)).hosts) == {approved, available}
    assert set(load(statuses=["approved"], **cached(cache_dir)).hosts) == {approved}


def test_provider_strings_read_back_from_the_cache_stay_unsafe(
    load: Callable[..., InventoryManager], fleet: Fleet, cache_dir: Path, tmp_path: Path
):
    marker = tmp_path / "rendered"
    payload = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    name = put(fleet, "p-evil", Status.APPROVED, gpu_name=f"NVIDIA {payload}")
    load(**cached(cache_dir))
    fleet.client.delete(fleet.keys.provider("p-evil"))  # so the next load can only come from the cache

    im = load(compose={"gpu_name": "worldland_spec.gpus[0].name"}, **cached(cache_dir))

    v = hostvars(im, name)
    assert v["gpu_name"] == f"NVIDIA {payload}"
    assert not is_trusted_as_template(v["worldland_spec"]["gpus"][0]["name"])
    assert Templar(loader=DataLoader(), variables=v).template(trust_as_template("{{ gpu_name }}")) == (
        f"NVIDIA {payload}"
    )
    assert not marker.exists()

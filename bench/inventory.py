"""Benchmark of the inventory plugin: ``ansible-inventory --list`` and ``--graph`` over a large fleet.

    python -m bench inventory [--providers 10000] [--rounds 1] [--keep DIR]

In one run, on one private redis-server, each provider registered through the core with the spec of
``tests/data/protocol/registration.agent.json``, times the real ``ansible-inventory`` command for:

- (a) the worldland plugin reading Redis (``plugins/inventory/worldland.py``);
- (b) the floor: ``bench/inventory_plugins/worldland_baseline.py`` reading the same hosts, groups and
  vars from a JSON file and only calling ``add_group``/``add_host``/``set_variable``;
- (c) a static YAML inventory of the same hosts, groups and vars (``ansible.builtin.yaml``).

Goals (DESIGN.md, "Scale targets"): (a) <= 1.3 x (b), and (c) / (a) >= 4.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ansible
import redis
import yaml

from testkit.redis_server import RedisServer
from worldland.control.inventory import DEFAULT_STATUSES, inventory_hosts, status_group
from worldland.domain.lifecycle import Status
from worldland.domain.registration import parse_registration
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
AGENT_REGISTRATION = json.loads((REPO / "tests/data/protocol/registration.agent.json").read_text())
BASELINE_PLUGINS = REPO / "bench" / "inventory_plugins"
BIN = Path(sys.executable).parent
# Providers spread over the listed statuses, as a live fleet would be (mostly Available).
STATUS_CYCLE = [Status.AVAILABLE] * 6 + [Status.JOINED, Status.APPROVED, Status.PENDING, Status.OFFLINE]
PATHS = {
    Status.PENDING: [],
    Status.APPROVED: [Status.APPROVED],
    Status.JOINED: [Status.APPROVED, Status.JOINED],
    Status.AVAILABLE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE],
    Status.OFFLINE: [Status.APPROVED, Status.JOINED, Status.AVAILABLE, Status.OFFLINE],
}


def provider_message(index: int) -> str:
    pid = f"prov-{index:06d}"
    spec = {**AGENT_REGISTRATION["spec"], "hostname": f"rig-{index:06d}"}
    return json.dumps({**AGENT_REGISTRATION, "provider_id": pid, "spec": spec})


def _seed_chunk(url: str, prefix: str, indexes: list[int]) -> None:
    fleet = Fleet.open(connect(url), Keys(prefix))
    for index in indexes:
        request = parse_registration(provider_message(index))
        fleet.register(request)
        for step in PATHS[STATUS_CYCLE[index % len(STATUS_CYCLE)]]:
            fleet.store.transition(request.provider_id, step)


def seed(url: str, keys: Keys, count: int, processes: int) -> None:
    """Register ``count`` providers through the core (parse, register, transitions), in parallel."""
    chunks = [list(range(w, count, processes)) for w in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.starmap(_seed_chunk, [(url, keys.prefix, chunk) for chunk in chunks])


def write_sources(url: str, keys: Keys, workdir: Path) -> dict[str, Path]:
    """The three inventory sources of the same hosts, groups and vars."""
    fleet = Fleet.open(connect(url), keys)
    hosts = inventory_hosts(fleet)
    statuses = [status_group(s) for s in DEFAULT_STATUSES]

    plugin = workdir / "bench.worldland.yml"
    plugin.write_text(
        yaml.safe_dump(
            {"plugin": "worldland.provider.worldland", "redis_url": url, "key_prefix": keys.prefix}
        )
    )

    baseline = workdir / "bench.baseline.json"
    baseline.write_text(json.dumps({"groups": statuses, "hosts": [h.to_dict() for h in hosts]}))

    children: dict[str, dict[str, Any]] = {g: {"hosts": {}} for g in statuses}
    all_hosts: dict[str, Any] = {}
    for host in hosts:
        all_hosts[host.name] = host.variables
        for group in host.groups:
            children.setdefault(group, {"hosts": {}})["hosts"][host.name] = None
    static = workdir / "bench.static.yml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with static.open("w") as handle:
        yaml.dump({"all": {"hosts": all_hosts, "children": children}}, handle, Dumper=dumper)
    return {"plugin": plugin, "baseline": baseline, "static": static}


ENABLED = {
    "plugin": "worldland.provider.worldland",
    "baseline": "worldland_baseline",
    "static": "ansible.builtin.yaml",
}


def run_inventory(kind: str, source: Path, mode: str, output: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``ansible-inventory`` run; its stdout goes to ``output``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "WORLDLAND_"))},
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_INVENTORY_ENABLED": ENABLED[kind],  # only the plugin under test looks at the source
        "ANSIBLE_INVENTORY_PLUGINS": str(BASELINE_PLUGINS),
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with output.open("w") as out:
        result = subprocess.run(
            [str(BIN / "ansible-inventory"), "-i", str(source), mode],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0 or "WARNING" in result.stderr:
        raise RuntimeError(f"{kind} {mode} failed ({result.returncode}): {result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def check_same_inventory(outputs: dict[str, Path], count: int) -> None:
    """(a) and (b) must list the same inventory, or the comparison means nothing."""
    plugin, baseline = (json.loads(outputs[k].read_text()) for k in ("plugin", "baseline"))
    if len(plugin["_meta"]["hostvars"]) != count:
        raise RuntimeError(f"the plugin listed {len(plugin['_meta']['hostvars'])} hosts, not {count}")
    if plugin != baseline:
        raise RuntimeError("the plugin and the baseline list different inventories")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench inventory", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1, help="timings per command (best of)")
    parser.add_argument("--processes", type=int, default=2, help="processes that seed the fleet")
    parser.add_argument("--keep", type=Path, help="keep the generated sources and outputs in this folder")
    parser.add_argument("--skip-static", action="store_true", help="leave out (c), the slowest by far")
    args = parser.parse_args(argv)

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="worldland-bench-inventory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with RedisServer() as server:
            keys = Keys("bench:")
            print(
                f"# inventory benchmark: {platform.node()}, {multiprocessing.cpu_count()} cores, "
                f"ansible-core {ansible.__version__}, redis-server on 127.0.0.1:{server.port}"
            )
            start = time.perf_counter()
            seed(server.url, keys, args.providers, args.processes)
            print(
                f"seeded {args.providers:,} providers through the core in {time.perf_counter() - start:.1f} s"
            )
            sources = write_sources(server.url, keys, workdir)
            sizes = ", ".join(f"{k} {p.stat().st_size / 1e6:.1f} MB" for k, p in sources.items())
            print(f"sources: {sizes}")

            # Wall time is what the goals name, but this machine may be shared: CPU time (the command's,
            # plus redis-server's while the plugin reads it) is reported too, as the steadier figure.
            server_client = connect(server.url)
            kinds = [k for k in sources if k != "static" or not args.skip_static]
            wall: dict[tuple[str, str], float] = {}
            cpu: dict[tuple[str, str], float] = {}
            for round_ in range(args.rounds):
                for mode in ("--list", "--graph"):
                    outputs = {}
                    for kind in kinds:
                        if kind == "static" and round_ > 0:
                            continue  # several times slower: once is enough for its ratio
                        outputs[kind] = workdir / f"out-{kind}{mode.replace('-', '_')}.txt"
                        server_before = redis_cpu(server_client)
                        w, c = run_inventory(kind, sources[kind], mode, outputs[kind])
                        c += redis_cpu(server_client) - server_before
                        wall[kind, mode] = min(wall.get((kind, mode), w), w)
                        cpu[kind, mode] = min(cpu.get((kind, mode), c), c)
                    if mode == "--list" and round_ == 0:
                        check_same_inventory(outputs, args.providers)

            results: dict[str, Any] = {"providers": args.providers, "rounds": args.rounds}
            for mode in ("--list", "--graph"):
                entry: dict[str, float] = {}
                for measure, table in (("wall", wall), ("cpu", cpu)):
                    a, b = table["plugin", mode], table["baseline", mode]
                    entry |= {
                        f"plugin_{measure}_s": a,
                        f"baseline_{measure}_s": b,
                        f"a_over_b_{measure}": a / b,
                    }
                    line = f"{measure:>4}: (a) plugin {a:6.2f} s, (b) baseline {b:6.2f} s, a/b {a / b:.2f}"
                    if ("static", mode) in table:
                        c = table["static", mode]
                        entry |= {f"static_{measure}_s": c, f"c_over_a_{measure}": c / a}
                        line += f", (c) static YAML {c:6.2f} s, c/a {c / a:.1f}"
                    print(f"ansible-inventory {mode:<7} {line}")
                results[mode.strip("-")] = entry
            print("goals: a/b <= 1.3, c/a >= 4")
            print(json.dumps({"inventory": results}))
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

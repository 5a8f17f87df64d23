"""The ``worldland_agent`` role (``playbooks/install_agent.yml``) run for real against a lab host: a
virtual environment from a wheelhouse built here (the lab host never reaches a package index), the config
and unit written by the agent's own ``install``, the unit started by the lab's systemctl stand-in, whose
agent then registers and heartbeats to a Redis on the lab gateway. Converge, idempotence, check mode
(on a fresh host and after converge), the password of the Redis URL kept out of the output; the lab's
systemctl stand-in running the host's own units; and the role's Molecule scenario (``molecule test``,
about 40 s), which does the same through Molecule.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from testkit.listener import make_listener
from testkit.redis_server import RedisServer
from tests.lab.lab import SSHD
from worldland.domain.policy import ApprovalMode, ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROLE = REPO / "roles" / "worldland_agent"
# What the lab hosts run Python with (this machine's /usr; the inventory's ansible_python_interpreter):
# the wheelhouse is resolved for it (redis needs async-timeout below 3.11.3, for one).
HOST_PYTHON = "/usr/bin/python3"
WALLET = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"
SECRET = "lab-redis-pass-0f3a"
UNIT = "worldland-provider.service"
CONFIG = "/etc/worldland/provider.yml"
ANSIBLE_ENV = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PY_COLORS": "0"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """worldland and its dependencies' wheels, built once (this machine may use its index or pip cache)."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    build = subprocess.run(
        [str(BIN / "pip"), "--python", HOST_PYTHON, "wheel", "--quiet", "--wheel-dir", str(directory),
         str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    assert list(directory.glob("worldland-*.whl")), sorted(p.name for p in directory.iterdir())
    return directory


Recap = dict[str, int]
Completed = subprocess.CompletedProcess[str]


def install_agent(inventory: Path, extra: dict[str, Any], *args: str) -> tuple[Completed, Recap]:
    """``ansible-playbook playbooks/install_agent.yml``; the result and the host's recap counts."""
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/install_agent.yml",
         "-e", json.dumps(extra), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **ANSIBLE_ENV}, check=False,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if re.match(r"^\S+\s+: ok=", line)]
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])} if lines else {}
    return result, recap


def role_vars(wheelhouse: Path, redis_url: str, public_ip: str) -> dict[str, Any]:
    # the lab host has no default route, so the address to announce is given
    return {
        "worldland_agent_wheelhouse": str(wheelhouse),
        "worldland_agent_wallet_addr": WALLET,
        "worldland_agent_redis_url": redis_url,
        "worldland_agent_public_ip": public_ip,
        "worldland_agent_gpu_prices": {"RTX 4090": 0.45},  # any spelling; the config has the canonical one
    }


def output(result: Completed) -> str:
    return result.stdout[-6000:] + result.stderr[-3000:]


def test_check_mode_on_a_fresh_host_writes_nothing_and_starts_nothing(lab, lab_gateway, wheelhouse) -> None:
    view = lab(n=1, gpus="RTX-4090:2")
    host = view.hosts[0]
    with RedisServer(also_bind=(lab_gateway,)) as server:
        t0 = time.monotonic()
        result, recap = install_agent(
            view.inventory, role_vars(wheelhouse, server.url_at(lab_gateway), host.address), "--check"
        )
        took = time.monotonic() - t0
        assert result.returncode == 0, output(result)
        assert recap["failed"] == 0 and recap["changed"] > 0, recap  # it says what it would do
        for path in ("/opt/worldland", CONFIG, f"/etc/systemd/system/{UNIT}", "/var/lib/worldland"):
            assert not host.private_path(path).exists(), path  # nothing written on the host
        assert UNIT not in host.units()
        verbs = {e["verb"] for e in host.standin_log("systemctl")}
        assert verbs <= {"show", "is-enabled", "is-active"}, verbs  # asked, never started or enabled
        assert redis.Redis.from_url(server.url).dbsize() == 0  # no agent ran
    print(f"check mode on a fresh host: {took:.1f} s")


def test_the_role_installs_the_agent_idempotently_and_its_heartbeats_reach_redis(
    lab, lab_gateway, wheelhouse, keys: Keys
) -> None:
    view = lab(n=1, gpus="RTX-4090:2")
    host = view.hosts[0]
    with RedisServer(also_bind=(lab_gateway,)) as server:
        redis.Redis.from_url(server.url).config_set("requirepass", SECRET)
        fleet = Fleet.open(connect(f"redis://:{SECRET}@127.0.0.1:{server.port}/0"), keys)
        policy = ApprovalPolicy(mode=ApprovalMode.MANUAL, allow_private_ips=True)  # lab addresses are private
        listener = make_listener(fleet, StreamNames(), policy)
        url = f"redis://:{SECRET}@{lab_gateway}:{server.port}/0"
        extra = role_vars(wheelhouse, url, host.address)
        timings: dict[str, float] = {}
        try:
            t0 = time.monotonic()
            first, recap = install_agent(view.inventory, extra, "-v")
            timings["converge"] = time.monotonic() - t0
            assert first.returncode == 0, output(first)
            assert recap["changed"] > 0 and recap["failed"] == 0, recap

            config = yaml.safe_load(host.run(f"cat {CONFIG}").stdout)
            provider_id = config["provider_id"]
            assert config["wallet_addr"] == WALLET
            assert config["redis_url"] == url and config["public_ip"] == host.address
            assert config["gpu_prices_per_hour"] == {"RTX-4090": 0.45}

            t0 = time.monotonic()
            beat = None
            while beat is None and time.monotonic() - t0 < 60:
                listener.run(max_batches=1)  # answers the registration: pending (manual approval)
                beats = [json.loads(f["data"]) for _, f in fleet.client.xrange("provider:heartbeat")]
                beat = next((b for b in beats if b.get("provider_id") == provider_id), None)
            timings["first heartbeat"] = time.monotonic() - t0
            assert beat is not None, host.run(f"cat /var/log/worldland/{UNIT}.log", check=False).stdout
            assert beat["status"] == "pending"

            assert host.run(f"stat -c %a {CONFIG}").stdout == "600\n"
            assert host.run("stat -c %a /etc/worldland").stdout == "700\n"
            unit = host.run(f"cat /etc/systemd/system/{UNIT}").stdout
            assert f"ExecStart=/opt/worldland/agent/bin/worldland-provider --config {CONFIG} run" in unit
            assert host.ssh(f"systemctl is-active {UNIT}").stdout == "active\n"
            assert host.units()[UNIT]["enabled"] is True
            assert host.run("/opt/worldland/agent/bin/pip freeze").stdout.count("worldland==") == 1

            t0 = time.monotonic()
            again, recap = install_agent(view.inventory, extra, "-v")
            timings["idempotence"] = time.monotonic() - t0
            assert again.returncode == 0, output(again)
            assert recap["changed"] == 0, output(again)

            written = host.run(f"stat -c '%i %Y' {CONFIG} /etc/systemd/system/{UNIT}").stdout
            starts = host.units()[UNIT]["starts"]
            t0 = time.monotonic()
            check, recap = install_agent(view.inventory, extra, "--check")
            timings["check after converge"] = time.monotonic() - t0
            assert check.returncode == 0 and recap["changed"] == 0, output(check)
            # a setting that differs: the agent's dry run sees it, and still nothing is written
            drift_vars = {**extra, "worldland_agent_heartbeat_interval": 5}
            drift, recap = install_agent(view.inventory, drift_vars, "--check")
            assert drift.returncode == 0 and recap["changed"] > 0, output(drift)
            assert host.run(f"stat -c '%i %Y' {CONFIG} /etc/systemd/system/{UNIT}").stdout == written
            assert yaml.safe_load(host.run(f"cat {CONFIG}").stdout) == config
            assert host.units()[UNIT]["starts"] == starts  # neither restarted nor stopped

            for result in (first, again, check, drift):
                assert SECRET not in result.stdout + result.stderr  # no_log on the URL with a password
        finally:
            host.run(f"systemctl stop {UNIT}", check=False)
            fleet.client.close()
    print("role on a lab host: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_systemctl_stand_in_runs_the_units_a_host_wrote(lab) -> None:
    """What the role's test relies on: the lab's systemctl runs ExecStart= of the host's own units."""
    host = lab(n=1).hosts[0]
    units = {
        "sleeper": "Environment=GREETING=hello\n"
        "ExecStart=/bin/sh -c 'echo $GREETING from $(hostname); exec sleep 300'",
        "stubborn": "ExecStart=/bin/sh -c \"trap '' TERM; exec sleep 300\"",  # ignores SIGTERM
        "brief": "ExecStart=/bin/true",
    }
    for name, service in units.items():
        host.run(
            f"cat > /etc/systemd/system/{name}.service",
            input=f"[Unit]\nDescription={name}\n\n[Service]\n{service}\n",
        )

    def main_pid(unit: str) -> int:
        return int(host.run(f"systemctl show -p MainPID --value {unit}").stdout)

    def alive(pid: int) -> bool:
        state = host.run(f"grep '^State:' /proc/{pid}/status", check=False).stdout
        return bool(state) and "zombie" not in state

    def active(unit: str) -> str:
        return host.run(f"systemctl is-active {unit}", check=False).stdout.strip()

    host.ssh("systemctl enable --now sleeper")  # over SSH: the service outlives the session
    first = main_pid("sleeper")
    assert alive(first) and active("sleeper") == "active"
    log = host.private_path("/var/log/worldland/sleeper.service.log")
    deadline = time.monotonic() + 5
    while "hello from" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"hello from {host.name}" in log.read_text()  # the unit's environment, the host's hostname
    host.run("systemctl start sleeper && systemctl enable --now sleeper")
    assert main_pid("sleeper") == first  # running already: nothing to do
    host.run("systemctl restart sleeper")
    second = main_pid("sleeper")
    assert second != first and alive(second) and not alive(first)
    host.run("systemctl stop sleeper")
    assert not alive(second) and active("sleeper") == "inactive"

    host.run("systemctl start stubborn")
    stubborn = main_pid("stubborn")
    t0 = time.monotonic()
    host.run("systemctl stop stubborn")
    assert not alive(stubborn) and time.monotonic() - t0 >= 4  # SIGKILL after the stop timeout

    host.run("systemctl start brief")
    deadline = time.monotonic() + 5
    while active("brief") == "active" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active("brief") == "inactive"  # its process exited

    # the lab's known units, and units of this machine's that the host sees through its /etc overlay
    # (e.g. sshd.service): recorded only, never run inside a host
    others = [
        "containerd.service",
        *sorted(p.name for p in Path("/etc/systemd/system").glob("*.service"))[:2],
    ]
    for name in others:
        host.run(f"systemctl start {name}")
        assert active(name) == "active"
        assert "pid_start" not in host.units()[name] and "exec" not in host.units()[name], name


@pytest.mark.slow  # about 40 s; `make test` runs it (nothing deselects slow tests there)
@pytest.mark.timeout(600)
def test_the_molecule_scenario_passes(tmp_path: Path) -> None:
    """``molecule test`` of roles/worldland_agent/molecule/default: its own lab host, Redis and listener."""
    tools = ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", SSHD, "redis-server")
    missing = [t for t in tools if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"the SSH lab needs root and {', '.join(missing) or 'its tools'} (make install)")
    env = {
        **os.environ,
        **ANSIBLE_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "molecule"),  # this run's own (and so its own lab)
        "NO_COLOR": "1",
    }
    t0 = time.monotonic()
    result = subprocess.run(
        [str(BIN / "molecule"), "test"], cwd=ROLE, env=env, capture_output=True, text=True, timeout=540,
        check=False,
    )  # fmt: skip
    took = time.monotonic() - t0
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-8000:]
    for action in ("create", "prepare", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"{action}\W+Executed: Successful", text), action
    recap = re.search(r"default\s+: actions=.*", text)
    assert recap and "failed=0" in recap.group(0), text[-3000:]
    # the lab directory create.yml and destroy.yml name after the ephemeral directory
    digest = hashlib.sha1(env["MOLECULE_EPHEMERAL_DIRECTORY"].encode(), usedforsecurity=False).hexdigest()
    assert not Path(f"/tmp/wl-molecule-{digest[:8]}").exists(), "destroy.yml left its lab behind"
    print(f"molecule test: {took:.1f} s; {recap.group(0)}")

"""The paths a newcomer takes from the README and the docs, run as written.

- "Try it without a cluster": the README's own shell block (a private Redis, the Kubernetes API test
  server as the cluster, the listener, the Go agent's registration, ``status``/``approve``, the inventory),
  with the suite's virtualenv in place of the block's first two lines and a free port for 6390.
- "The collection outside the checkout": ``make collection`` (the Makefile's own recipe) into a private
  HOME; ``ansible-inventory -i inventory/worldland.yml`` from another directory finds the plugin there;
  the README's ``ansible.cfg`` lines make an unreadable Redis fail the run; in the checkout, and with
  ``make lint``'s ``ANSIBLE_COLLECTIONS_PATH``, Ansible still loads the checkout's plugins, not the copy.
- ``inventory/control.ini`` (docs/audit.md's example inventory) parses and is what the cron playbook targets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.factories import registration
from testkit.redis_server import free_port
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README = REPO / "README.md"
PROVIDER_ID = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"  # tests/data/protocol/registration.agent.json


def readme_block(heading: str, language: str) -> str:
    """The first ```language block after ``heading`` in the README."""
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(rf"^```{language}\n(.*?)^```$", section, re.S | re.M)
    assert match, f"no ```{language} block under {heading!r}"
    return match.group(1)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This machine's environment without its Ansible/WorldLand settings, HOME private, .venv first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANSIBLE_", "WORLDLAND_")) and k != "KUBECONFIG"
    }
    env |= {"HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}
    return env | extra


def processes_marked(marker: str) -> list[int]:
    """PIDs of processes whose environment carries ``marker`` (what the README block started)."""
    found = []
    needle = f"WORLDLAND_README_RUN={marker}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# -- Try it without a cluster ----------------------------------------------------------------------------


def test_try_it_without_a_cluster_runs_as_written(tmp_path) -> None:
    block = readme_block("### Try it without a cluster", "sh")
    lines = block.splitlines()
    # the install: replaced by the suite's virtualenv (already on PATH below), and nothing else is
    assert lines[0].startswith("python3 -m venv ") and "pip install -e '.[control]'" in lines[0]
    assert lines[1].startswith("export PATH=")
    port = free_port()
    script = "\n".join(lines[2:]).replace("6390", str(port))
    assert str(port) in script and "6379" not in script
    marker = uuid.uuid4().hex
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = clean_env(tmp_path / "home", TMPDIR=str(scratch), WORLDLAND_README_RUN=marker)
    try:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        left = processes_marked(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(redis.ConnectionError):  # stopped by the block, unless it failed first
            redis.Redis(port=port, socket_timeout=1).shutdown(nosave=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert left == [], "the block left processes running"
    assert list(scratch.iterdir()) == [], "the block left its scratch directory"
    out = run.stdout
    assert PROVIDER_ID in out and "A100-SXM4-80GB" in out, out
    assert out.index("pending") < out.index("approved"), out  # status, approve, status
    graph = out[out.index("@all:") :]
    assert re.search(r"@approved:\n[ |]*--rig-07-", graph), graph  # the inventory plugin sees it approved


# -- the collection outside the checkout -------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A HOME whose ~/.ansible/collections holds the collection, installed by the Makefile's recipe."""
    home = tmp_path_factory.mktemp("home")
    collections = home / ".ansible" / "collections"
    run = subprocess.run(
        ["make", "-o", ".venv/.installed-stamp", "collection",
         f"COLLECTIONS_DIR={collections}", f"COLLECTION_STAMP={home / 'collection-stamp'}"],
        cwd=REPO, env=clean_env(home), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--offline" in run.stdout and "installed successfully" in run.stdout, run.stdout
    copy = collections / "ansible_collections" / "worldland" / "provider"
    assert (copy / "plugins" / "inventory" / "worldland.py").is_file() and (
        copy / "roles" / "audit_cron"
    ).is_dir()
    assert not (copy / "tests").exists() and not (copy / "worldland").exists()  # build_ignore
    yield home


def ansible(tool: str, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_installed_collection_serves_the_inventory_outside_the_checkout(
    installed, tmp_path, redis_url, keys
) -> None:
    fleet = Fleet.open(connect(redis_url), keys)
    pid = f"p-readme-{uuid.uuid4().hex[:6]}"
    fleet.register(registration(pid))
    elsewhere = tmp_path / "ops"
    elsewhere.mkdir()
    env = clean_env(installed, WORLDLAND_REDIS_URL=redis_url, WORLDLAND_KEY_PREFIX=keys.prefix)
    source = str(REPO / "inventory" / "worldland.yml")

    run = ansible("ansible-inventory", "-i", source, "--list", cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = json.loads(run.stdout)
    node = fleet.store.require(pid).node_name
    assert listed["pending"]["hosts"] == [node] and "WARNING" not in run.stderr, run.stderr

    # Redis unreachable: by default a warning and an empty inventory, exit 0 ...
    down = env | {"WORLDLAND_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    run = ansible("ansible-inventory", "-i", source, "--list", cwd=elsewhere, env=down)
    assert run.returncode == 0 and "Failed to parse" in run.stderr, run.stdout + run.stderr
    # ... and with the README's lines in the operator's own ansible.cfg, a failed run
    (elsewhere / "ansible.cfg").write_text(readme_block("### The collection outside the checkout", "ini"))
    run = ansible("ansible-inventory", "-i", source, "--list", cwd=elsewhere, env=down)
    assert run.returncode != 0 and "worldland" in run.stderr, run.stdout + run.stderr
    run = ansible("ansible-inventory", "-i", source, "--list", cwd=elsewhere, env=env)
    assert run.returncode == 0 and json.loads(run.stdout)["pending"]["hosts"] == [node], run.stderr


def plugin_path(run: subprocess.CompletedProcess[str]) -> Path:
    """The file ``ansible-doc`` says the plugin came from: ``> NAME (PATH)`` on its first line."""
    assert run.returncode == 0, run.stdout + run.stderr
    match = re.search(r"\((/[^)]+)\)", run.stdout.splitlines()[0])
    assert match, run.stdout[:300]
    return Path(match.group(1))


def test_the_checkout_and_lint_use_the_checkout_not_the_installed_copy(installed, tmp_path) -> None:
    copy = installed / ".ansible" / "collections"
    doc = ("-t", "filter", "worldland.provider.gpu_model")
    here = plugin_path(ansible("ansible-doc", *doc, cwd=REPO, env=clean_env(installed)))
    assert here.resolve().is_relative_to(REPO) and not here.is_relative_to(copy), here
    lint_env = clean_env(
        installed, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections")
    )  # as make lint sets it
    linted = plugin_path(ansible("ansible-doc", *doc, cwd=tmp_path, env=lint_env))
    assert linted.resolve().is_relative_to(REPO) and not linted.is_relative_to(copy), linted
    outside = plugin_path(ansible("ansible-doc", *doc, cwd=tmp_path, env=clean_env(installed)))
    assert outside.is_relative_to(copy), outside  # elsewhere the installed copy is the one found


# -- inventory/control.ini ---------------------------------------------------------------------------------


def test_the_control_host_inventory_of_docs_audit(tmp_path) -> None:
    assert "inventory/control.ini" in (REPO / "docs" / "audit.md").read_text()
    env = clean_env(tmp_path)
    run = ansible("ansible-inventory", "-i", "inventory/control.ini", "--list", cwd=REPO, env=env)
    assert run.returncode == 0 and "WARNING" not in run.stderr, run.stdout + run.stderr
    listed = json.loads(run.stdout)
    hosts = listed["worldland_control"]["hosts"]
    assert hosts and all(listed["_meta"]["hostvars"][h]["audit_cron_user"] == "worldland" for h in hosts)
    run = ansible(
        "ansible-playbook", "-i", "inventory/control.ini", "playbooks/install_audit_cron.yml", "--list-hosts",
        cwd=REPO, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(rf"hosts \({len(hosts)}\):", run.stdout) and all(h in run.stdout for h in hosts)


# -- docs/operating.md: Redis ------------------------------------------------------------------------------

OPERATING = REPO / "docs" / "operating.md"


def operating_blocks(language: str) -> list[str]:
    section = OPERATING.read_text().split("\n## Redis\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.S | re.M)


def settings(block: str) -> list[list[str]]:
    return [line.split("#")[0].split() for line in block.splitlines() if line.split("#")[0].strip()]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_redis(processes, conf: Path, port: int, *args: str) -> redis.Redis:
    process = subprocess.Popen(
        ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(process)
    client = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.05)


def test_the_guides_redis_settings_keep_the_fleet_across_a_crash(tmp_path, processes) -> None:
    conf_text = operating_blocks("conf")[0]
    assert ["appendonly", "yes"] in settings(conf_text) and ["maxmemory-policy", "noeviction"] in settings(
        conf_text
    )
    conf = tmp_path / "redis.conf"
    conf.write_text(conf_text + f"dir {tmp_path}\n")
    port = free_port()
    client = start_redis(processes, conf, port)
    for name, *value in settings(conf_text):
        if name != "save":
            assert client.config_get(name)[name] == " ".join(value), name
    keys = Keys(prefix=f"ops-{uuid.uuid4().hex[:6]}:")
    fleet = Fleet.open(connect(f"redis://127.0.0.1:{port}/0"), keys)
    pid = f"p-ops-{uuid.uuid4().hex[:6]}"
    fleet.register(registration(pid))
    time.sleep(1.5)  # everysec: written and fsynced within a second
    processes[-1].kill()  # a crash: no shutdown, no final save
    processes[-1].wait(timeout=10)
    start_redis(processes, conf, port)
    again = Fleet.open(connect(f"redis://127.0.0.1:{port}/0"), keys)
    assert again.store.require(pid).status.value == "pending"


def test_the_guides_sentinel_url_finds_the_primary(tmp_path, processes) -> None:
    primary_port, sentinel_port = free_port(), free_port()
    primary = tmp_path / "primary.conf"
    primary.write_text(operating_blocks("conf")[0] + f"dir {tmp_path}\n")
    client = start_redis(processes, primary, primary_port)
    sentinel_text = operating_blocks("conf")[1]
    monitor = next(s for s in settings(sentinel_text) if s[:2] == ["sentinel", "monitor"])
    service = monitor[2]
    # the guide's sentinel.conf, for one sentinel on this machine: its primary here, a quorum of one
    here = sentinel_text.replace(f"{monitor[3]} {monitor[4]} {monitor[5]}", f"127.0.0.1 {primary_port} 1")
    (tmp_path / "sentinel.conf").write_text(here + f"dir {tmp_path}\n")
    start_redis(processes, tmp_path / "sentinel.conf", sentinel_port, "--sentinel")
    url = next(
        line.split("=", 1)[1] for line in operating_blocks("sh")[0].splitlines() if "redis+sentinel" in line
    )
    assert url.startswith("redis+sentinel://") and url.endswith(f"/{service}/0")
    url = re.sub(r"//[^/]+/", f"//127.0.0.1:{sentinel_port}/", url)
    keys = Keys(prefix=f"ops-{uuid.uuid4().hex[:6]}:")
    pid = f"p-ops-{uuid.uuid4().hex[:6]}"
    Fleet.open(client, keys).register(registration(pid))
    run = subprocess.run(
        [str(BIN / "worldland"), "--redis-url", url, "--key-prefix", keys.prefix, "status", "--json"],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [p["provider_id"] for p in json.loads(run.stdout)] == [pid]

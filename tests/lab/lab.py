"""The SSH lab: provider hosts as real sshd processes, each in its own network, mount and UTS namespace.

Layout of one lab (slot ``k``, subnet ``10.213.k.0/24`` by default):

- bridge ``wlab<k>`` with ``10.213.k.1/24`` in the root namespace (the *gateway*: servers the hosts must
  reach, such as the Kubernetes API test server or Redis, listen there), plus an ``unreachable`` route for
  the subnet at a high metric, so that lab addresses can never go out through the default route;
- host ``i``: network namespace ``wlab<k>-h<i>`` with ``eth0`` = ``10.213.k.(10+i)/24`` (a veth whose
  root side ``wlab<k>h<i>`` is on the bridge; no default route), and a ``/usr/sbin/sshd`` started as
  ``ip netns exec NS unshare --mount --uts sh -c '<mounts>; hostname; exec sshd -D'`` so every SSH
  session inherits the host's private mounts and hostname.
- private directories: ``/etc``, ``/root``, ``/opt``, ``/usr/local``, ``/var/lib`` and ``/var/log`` are
  overlays (reads fall through to this machine, writes stay in ``<host dir>/upper/...``), so a role can
  write ``/etc/kubernetes``, ``/etc/containerd``, ``/var/lib/kubelet``, ``/etc/worldland``,
  ``/var/log/worldland`` - or anything else under those trees - without touching this machine or the
  other hosts. Where overlayfs is unavailable the lab falls back to bind-mounting per-host directories
  over just those five (``etc_mode="bind"``; absent mount points are created, empty, on this machine).
- the stand-ins (``nvidia-smi``, ``kubeadm``, ``systemctl``) are wrappers in the host's
  ``/usr/local/sbin``, which comes before ``/usr/sbin``, ``/usr/bin`` and ``/bin`` on root's PATH.

Network safety: before any host starts, the bridge has its address (so the lab subnet is a connected
route on the bridge) and ``ip route get`` is checked for every host address: the lab refuses to start if
one would leave through a gateway or any device but the bridge. Subnets that overlap an existing route or
address are never used. Every lab is recorded in ``/run/worldland-lab/slot-<k>.json`` before it creates
anything; a lab whose owner died (``kill -9``) is a leftover, and the next lab start removes it
(processes in its namespaces by PID, SSH control masters, namespaces, links, route).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.lab.gpus import GpuPlan, HostGpus

PREFIX = "wlab"
REGISTRY = Path(os.environ.get("WORLDLAND_LAB_REGISTRY", "/run/worldland-lab"))
NET_BASE = os.environ.get("WORLDLAND_LAB_NET", "10.213")  # the /16 whose /24s the labs use
ROUTE_PROTO = "213"  # marks the lab's own "unreachable" routes
ROUTE_METRIC = "4242"
FIRST_HOST = 10  # host i gets .(10 + i)
MAX_HOSTS = 240
OVERLAYS = ("/etc", "/root", "/opt", "/usr/local", "/var/lib", "/var/log")
BIND_PRIVATE = (
    "/etc/kubernetes",
    "/etc/containerd",
    "/etc/worldland",
    "/var/lib/kubelet",
    "/var/log/worldland",
)
STANDINS = {"nvidia-smi": "nvidia_smi.py", "kubeadm": "kubeadm.py", "systemctl": "systemctl.py"}
STANDIN_DIR = Path(__file__).resolve().parent / "standins"
SSHD = "/usr/sbin/sshd"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KNOWN_UNITS = ["containerd.service", "kubelet.service", "ssh.service"]
# files and folders a lab creates in its directory (removed at teardown when the lab did not create the dir)
DIR_ENTRIES = ("hosts", "cp", "id_ed25519", "id_ed25519.pub", "known_hosts", "authorized_keys", "lab.json")

_NETNS_RE = re.compile(rf"^{PREFIX}(\d+)-h(\d+)$")
_LINK_RE = re.compile(rf"^{PREFIX}(\d+)(?:h(\d+))?$")


class LabError(RuntimeError):
    """The lab could not start (or refused to, for network safety)."""


class LabUnsafe(LabError):
    """A lab address would be routed somewhere other than the lab bridge: nothing was started."""


# --- small helpers ------------------------------------------------------------------------------------


def sh(
    *argv: str, check: bool = True, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(
            f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def ip_json(*args: str) -> Any:
    out = sh("ip", "-j", *args).stdout.strip()
    return json.loads(out) if out else []


def proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): a PID plus this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and proc_start(pid) == start  # type: ignore[arg-type]


def netns_names() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_pids(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace`` seconds. By PID only."""
    pids = {p for p in pids if p > 1 and p != os.getpid()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                pids.discard(pid)
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def route_problems(results: dict[str, list[dict[str, Any]]], bridge: str) -> list[str]:
    """Given ``ip -j route get`` output per address, what makes any of them unsafe (empty list: safe)."""
    problems = []
    for address, routes in results.items():
        if not routes:
            problems.append(f"{address}: no route")
            continue
        route = routes[0]
        if route.get("gateway"):
            problems.append(f"{address}: would go through gateway {route['gateway']} on {route.get('dev')}")
        elif route.get("dev") != bridge:
            problems.append(
                f"{address}: would leave through {route.get('dev') or route.get('type')}, not {bridge}"
            )
    return problems


def subnet_is_free(subnet: ipaddress.IPv4Network, routes: list[dict[str, Any]], addrs: list[str]) -> bool:
    """No existing route (other than default) and no address on this machine overlaps ``subnet``."""
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or ":" in dst:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(subnet):
                return False
    return not any(ipaddress.ip_address(a) in subnet for a in addrs if ":" not in a)


def _machine_routes() -> tuple[list[dict[str, Any]], list[str]]:
    routes = ip_json("route", "show", "table", "all")
    addrs = [
        a["local"] for link in ip_json("addr", "show") for a in link.get("addr_info", []) if "local" in a
    ]
    return routes, addrs


def preferred_slot() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return 1 + int(worker[2:]) % 254
    return 1


# --- the registry of labs on this machine ------------------------------------------------------------


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


COOLDOWN_S = 60  # a freed slot is taken again only when no other is free: names and subnet stay distinct


def _freed_recently(slot: int) -> bool:
    try:
        return time.time() - (REGISTRY / f"freed-{slot}").stat().st_mtime < COOLDOWN_S
    except OSError:
        return False


def _entry_path(slot: int) -> Path:
    return REGISTRY / f"slot-{slot}.json"


def _read_entry(slot: int) -> dict[str, Any] | None:
    try:
        return json.loads(_entry_path(slot).read_text())
    except (OSError, ValueError):
        return None


def _write_entry(entry: dict[str, Any]) -> None:
    path = _entry_path(entry["slot"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=1))
    os.replace(tmp, path)


def entry_is_live(entry: dict[str, Any]) -> bool:
    if entry.get("detached"):
        return any(alive(h.get("pid"), h.get("start")) for h in entry.get("hosts", []))
    owner = entry.get("owner") or {}
    return alive(owner.get("pid"), owner.get("start"))


def _slots_in_use_on_machine() -> set[int]:
    slots = {int(m.group(1)) for ns in netns_names() if (m := _NETNS_RE.match(ns))}
    slots |= {
        int(m.group(1)) for link in ip_json("link", "show") if (m := _LINK_RE.match(link.get("ifname", "")))
    }
    for route in ip_json("route", "show", "table", "all", "proto", ROUTE_PROTO):
        with contextlib.suppress(ValueError, IndexError):
            net = ipaddress.ip_network(route.get("dst", ""), strict=False)
            if str(net).startswith(NET_BASE + "."):
                slots.add(int(str(net).split(".")[2]))
    return slots


def sweep(include_live: bool = False) -> list[int]:
    """Remove leftovers of labs whose owner is gone (or all labs, with ``include_live``). Returns slots."""
    removed = []
    with registry_lock():
        registered = {
            int(p.stem.split("-")[1]): _read_entry(int(p.stem.split("-")[1]))
            for p in REGISTRY.glob("slot-*.json")
        }
        for slot, entry in registered.items():
            if entry is None or include_live or not entry_is_live(entry):
                teardown_slot(slot, entry)
                removed.append(slot)
        for slot in _slots_in_use_on_machine() - set(registered):
            teardown_slot(slot, None)  # names with the lab prefix but no record: a leftover
            removed.append(slot)
    return sorted(removed)


def close_control_masters(cp_dir: Path) -> None:
    if not cp_dir.is_dir():
        return
    for sock in cp_dir.iterdir():
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O", "exit", "lab-host"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        with contextlib.suppress(OSError):
            sock.unlink()


def teardown_slot(slot: int, entry: dict[str, Any] | None) -> None:
    """Everything a lab in ``slot`` may have made: control masters, processes, namespaces, links, route."""
    entry = entry or {}
    lab_dir = Path(entry["dir"]) if entry.get("dir") else None
    if lab_dir is not None:
        close_control_masters(lab_dir / "cp")
    namespaces = [ns for ns in netns_names() if (m := _NETNS_RE.match(ns)) and int(m.group(1)) == slot]
    pids = {p for ns in namespaces for p in netns_pids(ns)}
    pids |= {h["pid"] for h in entry.get("hosts", []) if alive(h.get("pid"), h.get("start"))}
    kill_pids(pids)
    links = [
        link["ifname"]
        for link in ip_json("link", "show")
        if (m := _LINK_RE.match(link.get("ifname", ""))) and int(m.group(1)) == slot
    ]
    batch = [f"link del {name}" for name in links if name != f"{PREFIX}{slot}"]
    batch += [f"netns del {ns}" for ns in namespaces]
    if f"{PREFIX}{slot}" in links:
        batch.append(f"link del {PREFIX}{slot}")
    subnet = f"{NET_BASE}.{slot}.0/24"
    if any(r.get("dst") == subnet for r in ip_json("route", "show", "table", "all", "proto", ROUTE_PROTO)):
        batch.append(f"route del unreachable {subnet} metric {ROUTE_METRIC} proto {ROUTE_PROTO}")
    if batch:
        sh("ip", "-force", "-batch", "-", input="\n".join(batch) + "\n", check=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and slot in _slots_in_use_on_machine():
        time.sleep(0.05)
    if lab_dir is not None and entry.get("remove_dir"):
        remove_lab_files(lab_dir, bool(entry.get("owns_dir")))
    _remove_mount_points(slot, entry.get("created_mount_points", []))
    with contextlib.suppress(OSError):
        (REGISTRY / f"freed-{slot}").touch()
        _entry_path(slot).unlink()


def _remove_mount_points(slot: int, created: list[str]) -> None:
    """Remove the (empty) mount points a bind-mode lab created on this machine - unless another lab that
    may be using them is still registered: removing a directory detaches mounts on it in every
    namespace. Runs under the registry lock; a mount point left over is handed to the next such lab."""
    others = [_read_entry(int(p.stem.split("-")[1])) for p in REGISTRY.glob("slot-*.json")]
    others = [e for e in others if e and e.get("slot") != slot]
    if any(e.get("etc_mode", "bind") == "bind" for e in others):
        for entry in others:
            if entry.get("etc_mode") == "bind":
                entry["created_mount_points"] = sorted({*entry.get("created_mount_points", []), *created})
                _write_entry(entry)
                break
        return
    for path in created:
        with contextlib.suppress(OSError):
            os.rmdir(path)  # only if still empty


def remove_lab_files(lab_dir: Path, owns_dir: bool) -> None:
    """The lab's directory if the lab created it, else just what the lab put there (WORLDLAND_LAB_KEEP=1
    keeps everything, for a look at the logs)."""
    if os.environ.get("WORLDLAND_LAB_KEEP"):
        return
    if owns_dir:
        shutil.rmtree(lab_dir, ignore_errors=True)
        return
    for name in DIR_ENTRIES:
        target = lab_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                target.unlink()
    for inv in lab_dir.glob("inventory*.yml"):
        inv.unlink()


def footprint(slot: int, lab_dir: str | Path) -> set[tuple[str, str, int | None]]:
    """The namespaces (name, inode), links (name, ifindex) and processes (pid, start time) of the lab in
    ``slot`` with directory ``lab_dir``: identities, so a later lab reusing the slot's names differs."""
    found: set[tuple[str, str, int | None]] = set()
    for ns in netns_names():
        if (m := _NETNS_RE.match(ns)) and int(m.group(1)) == slot:
            with contextlib.suppress(OSError):
                found.add(("netns", ns, os.stat(f"/run/netns/{ns}").st_ino))
                found |= {("process", str(pid), proc_start(pid)) for pid in netns_pids(ns)}
    for link in ip_json("link", "show"):
        if (m := _LINK_RE.match(link.get("ifname", ""))) and int(m.group(1)) == slot:
            found.add(("link", link["ifname"], link.get("ifindex")))
    for line in lab_resources()["processes"]:
        if f"{lab_dir}/" in line:
            pid = int(line.split()[0])
            found.add(("process", str(pid), proc_start(pid)))
    return found


def lab_resources() -> dict[str, list[str]]:
    """Every namespace, link, route and sshd/ssh-master process on this machine bearing the lab prefix."""
    namespaces = [ns for ns in netns_names() if _NETNS_RE.match(ns)]
    links = [link["ifname"] for link in ip_json("link", "show") if _LINK_RE.match(link.get("ifname", ""))]
    procs = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cmd.startswith(("sshd:", SSHD, "ssh:", "ssh ")) and f"/{PREFIX}" in cmd:
                procs.append(f"{pid_dir.name} {cmd.strip()}")
    routes = [r["dst"] for r in ip_json("route", "show", "table", "all", "proto", ROUTE_PROTO)]
    return {"namespaces": namespaces, "links": links, "processes": procs, "routes": routes}


# --- hosts ---------------------------------------------------------------------------------------------


@dataclass
class LabHost:
    """One provider host. ``ssh()`` goes over real SSH; ``run()`` enters its namespaces directly."""

    lab: Lab = field(repr=False)
    index: int
    name: str
    address: str
    gpus: HostGpus
    pid: int = 0
    start: int | None = None

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.lab.slot}-h{self.index}"

    @property
    def veth(self) -> str:
        return f"{PREFIX}{self.lab.slot}h{self.index}"

    @property
    def dir(self) -> Path:
        return self.lab.dir / "hosts" / self.name

    @property
    def config_path(self) -> Path:
        return self.dir / "host.json"

    def private_path(self, path: str) -> Path:
        """Where this host's copy of ``path`` lives on this machine (written files only, for overlays)."""
        return self.dir / "upper" / path.lstrip("/")

    @property
    def inventory_vars(self) -> dict[str, Any]:
        lab = self.lab
        common = [
            "-F /dev/null",
            f"-o UserKnownHostsFile={lab.known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            f"-o ControlPath={lab.dir}/cp/%r@%h",
        ]
        return {
            "ansible_host": self.address,
            "ansible_port": 22,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.key),
            "ansible_ssh_common_args": " ".join(common),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def ssh_argv(self, *command: str) -> list[str]:
        lab = self.lab
        opts = [
            "-F", "/dev/null",
            "-i", str(lab.key),
            "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", f"ControlPath={lab.dir}/cp/%r@%h",
            "-o", "ControlMaster=auto",
            "-o", "ControlPersist=60s",
        ]  # fmt: skip
        return ["ssh", *opts, f"root@{self.address}", *command]

    def ssh(self, command: str, check: bool = True, timeout: float = 60, input: str | None = None):
        """Run ``command`` on the host over SSH (a shell command line); returns the CompletedProcess."""
        proc = subprocess.run(
            self.ssh_argv(command), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"ssh {self.name} {command!r}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def run(self, command: str, check: bool = True, timeout: float = 60, input: str | None = None):
        """Run ``command`` inside the host's namespaces without SSH (nsenter into its sshd)."""
        argv = ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "--", "/bin/sh", "-c", command]
        env = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"{self.name}: {command!r}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def configure(self, gpus: str | HostGpus | None = None, **settings: Any) -> None:
        """Change what the stand-ins report (GPUs, driver, versions, ...); takes effect on their next run."""
        cfg = self.config()
        if gpus is not None:
            self.gpus = gpus if isinstance(gpus, HostGpus) else HostGpus.parse(gpus)
            cfg.update(gpus=self.gpus.records(self.name), driver=self.gpus.driver)
        cfg.update(settings)
        _write_json(self.config_path, cfg)

    def standin_log(self, command: str | None = None) -> list[dict[str, Any]]:
        path = self.dir / "standin.log"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if command is None or e["command"] == command]

    def units(self) -> dict[str, Any]:
        path = self.dir / "units.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "address": self.address,
            "netns": self.netns,
            "pid": self.pid,
            "start": self.start,
            "gpus": str(self.gpus),
            "dir": str(self.dir),
        }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- the lab -------------------------------------------------------------------------------------------


class Lab:
    """``with Lab(hosts=3, gpus="A100:2") as lab: ...`` - or ``start()`` / ``stop()``.

    ``dir``: where keys, inventory, host configs and logs go (a fresh temporary directory by default; it
    is removed at teardown unless ``WORLDLAND_LAB_KEEP=1``). ``etc_mode``: ``"auto"`` (overlays when the
    kernel allows them on ``dir``'s filesystem), ``"overlay"`` or ``"bind"``.
    """

    def __init__(
        self,
        hosts: int = 1,
        gpus: str | list[str | HostGpus] | GpuPlan | None = None,
        dir: str | Path | None = None,
        etc_mode: str = "auto",
        python: str | None = None,
    ) -> None:
        if not 0 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be between 0 and {MAX_HOSTS}")
        if etc_mode not in ("auto", "overlay", "bind"):
            raise ValueError("etc_mode must be auto, overlay or bind")
        self.initial_hosts = hosts
        self.plan = GpuPlan.parse(gpus)
        self._dir_arg = Path(dir).resolve() if dir else None
        self.etc_mode = etc_mode
        self.python = python or sys.executable
        self.slot = 0
        self.dir = Path()
        self.hosts: list[LabHost] = []
        self.attached: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._procs: dict[int, subprocess.Popen] = {}
        self._entry: dict[str, Any] = {}
        self._running = False
        self._atexit = False

    # -- addresses and names
    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.slot}"

    @property
    def subnet(self) -> str:
        return f"{NET_BASE}.{self.slot}.0/24"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: bind servers the hosts must reach here."""
        return f"{NET_BASE}.{self.slot}.1"

    def address(self, index: int) -> str:
        return f"{NET_BASE}.{self.slot}.{FIRST_HOST + index}"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yml"

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    # -- lifecycle
    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, detach: bool = False) -> Lab:
        """Claim a slot, build the network, check its routes, start the hosts. On any failure (or
        KeyboardInterrupt) everything made so far is torn down before the exception propagates."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, mounts)")
        for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", SSHD):
            if shutil.which(tool) is None:
                raise LabError(
                    f"{tool} is missing (make install / scripts/install-system-deps.sh installs it)"
                )
        t0 = time.monotonic()
        sweep()
        self._claim_slot()
        self._running = True
        if not self._atexit:
            atexit.register(self._atexit_stop)
            self._atexit = True
        try:
            self._prepare_dir()
            self._network()
            self.timings["network_s"] = time.monotonic() - t0
            self.add_hosts(self.initial_hosts)
            self._entry.update(detached=detach, owner=None if detach else self._entry["owner"])
            _write_entry(self._entry)
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - t0
        return self

    def _atexit_stop(self) -> None:
        if self._running and not self._entry.get("detached"):
            self.stop()

    def _claim_slot(self) -> None:
        with registry_lock():
            routes, addrs = _machine_routes()
            on_machine = _slots_in_use_on_machine()
            first = preferred_slot()
            order = [*range(first, 255), *range(1, first)]
            order.sort(key=_freed_recently)  # stable: recently freed slots go last
            for slot in order:
                if _entry_path(slot).exists() or slot in on_machine:
                    continue
                if not subnet_is_free(ipaddress.ip_network(f"{NET_BASE}.{slot}.0/24"), routes, addrs):
                    continue
                self.slot = slot
                me = os.getpid()
                self._entry = {
                    "slot": slot,
                    "owner": {"pid": me, "start": proc_start(me)},
                    "detached": False,
                    "dir": None,
                    "hosts": [],
                }
                _write_entry(self._entry)
                return
        raise LabError(f"no free lab subnet in {NET_BASE}.0.0/16 (set WORLDLAND_LAB_NET to another /16)")

    def _prepare_dir(self) -> None:
        if self._dir_arg is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.slot}-", dir="/tmp"))
            owns = True
        else:
            self.dir = self._dir_arg
            if re.search(r"\s", str(self.dir)) or len(str(self.dir)) > 64:
                # a socket path has at most 107 bytes: dir + /cp/root@ADDRESS + 17 that ssh adds while binding
                raise LabError(
                    f"lab dir {self.dir} must be short (<= 64 chars: SSH control sockets) and without spaces"
                )
            owns = not self.dir.exists()
            state = self.dir / "lab.json"
            if state.exists():
                raise LabError(
                    f"{self.dir} holds a lab already (first: python -m tests.lab down --dir {self.dir})"
                )
            self.dir.mkdir(parents=True, exist_ok=True)
        self._entry.update(dir=str(self.dir), owns_dir=owns, remove_dir=True)
        _write_entry(self._entry)
        (self.dir / "hosts").mkdir(exist_ok=True)
        (self.dir / "cp").mkdir(mode=0o700, exist_ok=True)
        sh(
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"worldland-lab-{self.slot}",
            "-f",
            str(self.key),
        )
        shutil.copy(self.dir / "id_ed25519.pub", self.dir / "authorized_keys")
        self.known_hosts.write_text("")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        if self.etc_mode == "auto":
            self.etc_mode = "overlay" if self._overlay_works() else "bind"
        self._entry["etc_mode"] = self.etc_mode
        if self.etc_mode == "bind":
            # bind mounts need mount points on this machine: create the absent ones (empty), and record
            # them so that the last bind-mode lab's teardown removes them again
            created = [p for p in BIND_PRIVATE if not os.path.lexists(p)]
            for path in created:
                Path(path).mkdir(parents=True)
            self._entry["created_mount_points"] = created
        _write_entry(self._entry)

    def _overlay_works(self) -> bool:
        probe = self.dir / "probe"
        for sub in ("upper", "work", "lower", "mnt"):
            (probe / sub).mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        proc = sh("unshare", "--mount", "--propagation", "private", "mount", "-t", "overlay", "overlay",
                  "-o", opts, str(probe / "mnt"), check=False)  # fmt: skip
        shutil.rmtree(probe, ignore_errors=True)
        return proc.returncode == 0

    def _network(self) -> None:
        """Bridge with its address and the unreachable backstop, then the route check - before any host."""
        sh("ip", "-batch", "-", input=(
            f"link add {self.bridge} type bridge\n"
            f"addr add {self.gateway}/24 dev {self.bridge}\n"
            f"link set {self.bridge} up\n"
            f"route add unreachable {self.subnet} metric {ROUTE_METRIC} proto {ROUTE_PROTO}\n"
        ))  # fmt: skip
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.bridge}.disable_ipv6=1", check=False)
        self.check_routes([self.address(i) for i in range(1, max(self.initial_hosts, 1) + 1)])

    def check_routes(self, addresses: list[str]) -> None:
        """Refuse (LabUnsafe) unless every address is routed straight onto the lab bridge."""
        results = {a: ip_json("route", "get", a) for a in addresses}
        problems = route_problems(results, self.bridge)
        if problems:
            raise LabUnsafe(
                "lab addresses would leave this machine; refusing to start: " + "; ".join(problems)
            )

    def add_hosts(self, count: int) -> list[LabHost]:
        """Start ``count`` more hosts (in parallel)."""
        if count <= 0:
            return []
        first = len(self.hosts) + 1
        if first + count - 1 > MAX_HOSTS:
            raise LabError(f"at most {MAX_HOSTS} hosts per lab")
        t0 = time.monotonic()
        new = [
            LabHost(self, i, f"wl{self.slot}-h{i:02d}", self.address(i), self.plan.for_host(i - 1))
            for i in range(first, first + count)
        ]
        self.check_routes([h.address for h in new])
        keygens = []
        for host in new:
            host.dir.mkdir(parents=True)
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name]
            keygen += ["-f", str(host.dir / "ssh_host_ed25519_key")]
            keygens.append(subprocess.Popen(keygen, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        batch = []
        for host in new:
            batch += [
                f"netns add {host.netns}",
                f"link add {host.veth} type veth peer name eth0 netns {host.netns}",
                f"link set {host.veth} master {self.bridge} up",
            ]
        self.hosts += new  # from here on, teardown knows them
        sh("ip", "-batch", "-", input="\n".join(batch) + "\n")
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        inside = [subprocess.Popen(["ip", "-n", h.netns, "-batch", "-"], **pipes) for h in new]
        for host, proc in zip(new, inside, strict=True):
            _, err = proc.communicate(
                f"addr add {host.address}/24 dev eth0\nlink set eth0 up\nlink set lo up\n", timeout=30
            )
            if proc.returncode != 0:
                raise LabError(f"configuring {host.netns}: {err.strip()}")
        for proc in keygens:
            if proc.wait(timeout=30) != 0:
                raise LabError("ssh-keygen failed for a host key")
        self.check_routes([h.address for h in new])  # again, now that the links exist
        for host in new:
            self._prepare_host(host)
            self._start_sshd(host)
        self._wait_ready(new)
        with open(self.known_hosts, "a") as kh:
            for host in new:
                kind, key = (host.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
                kh.write(f"{host.address} {kind} {key}\n")
        self._save()
        self.timings.setdefault("hosts_s", 0.0)
        self.timings["hosts_s"] += time.monotonic() - t0
        return new

    def _prepare_host(self, host: LabHost, keep_config: bool = False) -> None:
        """The host's directory: overlay upper/work dirs, hostname, hosts, stand-ins, sshd config."""
        for sub in ("upper", "work"):
            shutil.rmtree(host.dir / sub, ignore_errors=True)
        for path in OVERLAYS if self.etc_mode == "overlay" else (*BIND_PRIVATE, "/usr/local/sbin"):
            host.private_path(path).mkdir(parents=True, exist_ok=True)
            if self.etc_mode == "overlay":
                (host.dir / "work" / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path in (*BIND_PRIVATE, "/usr/local/sbin"):  # present, empty, on every host (not on this machine)
            private = host.private_path(path)
            private.mkdir(parents=True, exist_ok=True)
            if self.etc_mode == "overlay" and path != "/usr/local/sbin":
                # Opaque: this machine's own /etc/worldland (say) never shows through to a host.
                os.setxattr(private, "trusted.overlay.opaque", b"y")
        if self.etc_mode == "overlay":
            # root's shell files as on a fresh Debian/Ubuntu machine, not this machine's (pyenv, cargo, ...):
            # the hosts' PATH is sshd's default for root, and a session does not pay for this machine's rc
            host.private_path("/root/.bashrc").write_text(
                "# ~/.bashrc of a lab host (tests/lab): a plain root shell\n"
                "[ -z \"$PS1\" ] && return\nPS1='\\h:\\w\\$ '\n"
            )
            host.private_path("/root/.profile").write_text(
                "# ~/.profile of a lab host (tests/lab)\n"
                'if [ "$BASH" ] && [ -f ~/.bashrc ]; then . ~/.bashrc; fi\n'
            )
        host.private_path("/etc/hostname").write_text(host.name + "\n")
        host.private_path("/etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n{self.gateway}\tworldland-lab-gateway\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        for command, script in STANDINS.items():
            wrapper = host.private_path(f"/usr/local/sbin/{command}")
            wrapper.write_text(
                "#!/bin/sh\n"
                f"# worldland lab stand-in for {command} (tests/lab/standins/{script}), not the real one\n"
                f"WORLDLAND_LAB_HOST_CONFIG={shlex.quote(str(host.config_path))}\n"
                "export WORLDLAND_LAB_HOST_CONFIG\n"
                f'exec {shlex.quote(self.python)} {shlex.quote(str(STANDIN_DIR / script))} "$@"\n'
            )
            wrapper.chmod(0o755)
        for name in ("units.json", "units.json.lock", "standin.log"):
            with contextlib.suppress(FileNotFoundError):
                (host.dir / name).unlink()
        if not (keep_config and host.config_path.exists()):
            _write_json(host.config_path, self._host_config(host))
        sshd_config = [
            f"ListenAddress {host.address}",
            "Port 22",
            f"HostKey {host.dir}/ssh_host_ed25519_key",
            "PidFile none",
            f"AuthorizedKeysFile {self.dir}/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp internal-sftp",
        ]
        (host.dir / "sshd_config").write_text("\n".join(sshd_config) + "\n")

    def _host_config(self, host: LabHost) -> dict[str, Any]:
        return {
            "name": host.name,
            "address": host.address,
            "gateway": self.gateway,
            "gpus": host.gpus.records(host.name),
            "driver": host.gpus.driver,
            "driver_version": "550.127.05",
            "cuda_version": "12.4",
            "kubernetes_version": "v1.31.4",
            "cpu_cores": 16,
            "memory_mb": 65536,
            "known_units": list(KNOWN_UNITS),
            "units_state": str(host.dir / "units.json"),
            "standin_log": str(host.dir / "standin.log"),
            "kube": {k: v for k, v in self.attached.items() if k == "kubeconfig"},
            "redis_url": self.attached.get("redis_url"),
        }

    def _mount_script(self, host: LabHost) -> str:
        lines = ["set -e"]
        if self.etc_mode == "overlay":
            for path in OVERLAYS:
                if not os.path.isdir(path):
                    continue
                rel = path.lstrip("/")
                opts = f"lowerdir={path},upperdir={host.dir}/upper/{rel},workdir={host.dir}/work/{rel}"
                lines.append(
                    f"mount -t overlay {PREFIX}-{rel.replace('/', '-')} -o {shlex.quote(opts)} {path}"
                )
        else:
            for path in (*BIND_PRIVATE, "/usr/local/sbin"):
                lines.append(f"mount --bind {shlex.quote(str(host.private_path(path)))} {path}")
            for path in ("/etc/hostname", "/etc/hosts"):
                lines.append(f"mount --bind {shlex.quote(str(host.private_path(path)))} {path}")
        lines.append(f"echo {host.name} > /proc/sys/kernel/hostname")
        lines.append(f"exec {SSHD} -D -e -f {shlex.quote(str(host.dir / 'sshd_config'))}")
        return "\n".join(lines)

    def _start_sshd(self, host: LabHost) -> None:
        argv = ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "/bin/sh", "-c", self._mount_script(host)]  # fmt: skip
        with open(host.dir / "sshd.log", "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                close_fds=True,
            )
        self._procs[proc.pid] = proc
        host.pid, host.start = proc.pid, proc_start(proc.pid)

    def _wait_ready(self, hosts: list[LabHost], timeout: float = 30) -> None:
        """Until each sshd answers with its SSH banner on its address."""
        pending = list(hosts)
        deadline = time.monotonic() + timeout
        while pending:
            for host in list(pending):
                proc = self._procs.get(host.pid)
                if proc is not None and proc.poll() is not None:
                    log = (host.dir / "sshd.log").read_text(errors="replace")[-2000:]
                    raise LabError(f"sshd for {host.name} exited ({proc.returncode}): {log}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((host.address, 22), timeout=0.5) as s,
                ):
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-2.0"):
                        pending.remove(host)
            if pending and time.monotonic() > deadline:
                raise LabError(f"sshd did not come up on: {', '.join(h.name for h in pending)}")
            if pending:
                time.sleep(0.02)

    def restart_hosts(self, hosts: list[LabHost] | None = None, keep_config: bool = False) -> None:
        """Fresh hosts: close their SSH masters, kill every process in their namespaces, wipe their
        private directories and stand-in state, start sshd again (same address, same host key)."""
        hosts = self.hosts if hosts is None else hosts
        for host in hosts:
            subprocess.run([*host.ssh_argv()[:-1], "-O", "exit", f"root@{host.address}"], capture_output=True,
                           timeout=10, check=False)  # fmt: skip
        kill_pids({p for h in hosts for p in netns_pids(h.netns)})
        for host in hosts:
            self._procs.pop(host.pid, None)
            self._prepare_host(host, keep_config=keep_config)
            self._start_sshd(host)
        self._wait_ready(hosts)
        self._save()

    def attach(
        self, kubeconfig: str | Path | None = None, redis_url: str | None = None, **extra: Any
    ) -> None:
        """Tell the hosts (their config, read by the stand-ins) about the cluster and Redis.

        LAB SHORTCUT: ``kubeconfig`` is an admin kubeconfig the kubeadm stand-in uses to check tokens
        and create Nodes; its server must be reachable from the hosts, i.e. listen on ``lab.gateway``.
        """
        if kubeconfig is not None:
            self.attached["kubeconfig"] = str(Path(kubeconfig).resolve())
        if redis_url is not None:
            self.attached["redis_url"] = redis_url
        self.attached.update(extra)
        for host in self.hosts:
            cfg = host.config()
            cfg["kube"] = {"kubeconfig": self.attached["kubeconfig"]} if "kubeconfig" in self.attached else {}
            cfg["redis_url"] = self.attached.get("redis_url")
            _write_json(host.config_path, cfg)
        self._save()

    def write_inventory(self, hosts: list[LabHost] | None = None, path: Path | None = None) -> Path:
        """A YAML inventory: group ``lab`` with every host's connection vars."""
        hosts = self.hosts if hosts is None else hosts
        path = path or self.inventory
        doc = {"all": {"children": {"lab": {"hosts": {h.name: h.inventory_vars for h in hosts}}}}}
        path.write_text(
            f"# written by tests/lab for lab {self.slot} ({self.subnet}); removed with the lab\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )
        return path

    def _save(self) -> None:
        self.write_inventory()
        state = {
            "slot": self.slot,
            "dir": str(self.dir),
            "bridge": self.bridge,
            "gateway": self.gateway,
            "subnet": self.subnet,
            "etc_mode": self.etc_mode,
            "python": self.python,
            "inventory": str(self.inventory),
            "key": str(self.key),
            "known_hosts": str(self.known_hosts),
            "attached": self.attached,
            "hosts": [h.to_json() for h in self.hosts],
        }
        _write_json(self.dir / "lab.json", state)
        self._entry["hosts"] = [{"name": h.name, "pid": h.pid, "start": h.start} for h in self.hosts]
        _write_entry(self._entry)

    @classmethod
    def load(cls, dir: str | Path) -> Lab:
        """The lab recorded in ``dir`` (by ``up`` in another process), for ``status`` and ``down``."""
        dir = Path(dir).resolve()
        try:
            state = json.loads((dir / "lab.json").read_text())
        except OSError:
            raise LabError(f"no lab in {dir}") from None
        lab = cls(hosts=0, dir=dir, etc_mode=state["etc_mode"], python=state["python"])
        lab.slot, lab.dir, lab.attached = state["slot"], dir, state.get("attached", {})
        entry = _read_entry(lab.slot)
        if entry is None or entry.get("dir") != str(dir):  # that lab is gone; its slot may be another's now
            entry = {"slot": lab.slot, "dir": str(dir), "hosts": [], "owns_dir": False}
        lab._entry = entry
        for h in state["hosts"]:
            host = LabHost(
                lab, h["index"], h["name"], h["address"], HostGpus.parse(h["gpus"]), h["pid"], h["start"]
            )
            lab.hosts.append(host)
        lab._running = True
        return lab

    def is_up(self) -> dict[str, bool]:
        return {h.name: alive(h.pid, h.start) for h in self.hosts}

    def stop(self) -> None:
        """Tear down everything (idempotent): control masters, processes by PID, namespaces, links."""
        if not self._running:
            return
        self._running = False
        t0 = time.monotonic()
        with registry_lock():
            entry = _read_entry(self.slot)
            me = {"pid": os.getpid(), "start": proc_start(os.getpid())}
            ours = entry is not None and (
                entry.get("dir") == str(self.dir) or (entry.get("dir") is None and entry.get("owner") == me)
            )
            if ours:
                entry["hosts"] = [{"name": h.name, "pid": h.pid, "start": h.start} for h in self.hosts]
                teardown_slot(self.slot, entry)
            else:
                # the slot's record is gone (swept) or now belongs to another lab: its names are not ours
                # to delete. Stop our own processes (by PID and start time) and remove our files only.
                kill_pids(h.pid for h in self.hosts if alive(h.pid, h.start))
                close_control_masters(self.dir / "cp")
                if self.dir != Path() and self._entry.get("dir") == str(self.dir):
                    remove_lab_files(self.dir, bool(self._entry.get("owns_dir")))
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._procs.clear()
        self.timings["stop_s"] = time.monotonic() - t0

    def summary(self) -> str:
        if self.etc_mode == "overlay":
            private = "overlays on " + ", ".join(OVERLAYS)
        else:
            private = "bind mounts on " + ", ".join(BIND_PRIVATE)
        lines = [
            f"lab {self.slot}: bridge {self.bridge} {self.gateway}/24 (servers for the hosts listen here)",
            f"  dir        {self.dir}",
            f"  inventory  {self.inventory}",
            f"  ssh        ssh -F /dev/null -i {self.key} -o UserKnownHostsFile={self.known_hosts} root@ADDR",
            f"  private    {private}",
        ]
        up = self.is_up()
        for h in self.hosts:
            lines.append(
                f"  {h.name:<10} {h.address:<15} pid {h.pid:<7} {'up' if up[h.name] else 'DOWN':<4} "
                f"gpus {h.gpus}"
            )
        return "\n".join(lines)

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
- every host runs without ``CAP_SYS_MODULE``, ``CAP_SYS_BOOT`` and ``CAP_SYS_TIME`` (``setpriv``): nothing in
  a host can load a kernel module, reboot or set the clock of this machine.

Kube mode (``Lab(kube=True)``): hosts that install REAL packages and run a real containerd and kubelet.

- overlays on ``/etc``, ``/root``, ``/opt``, ``/usr``, ``/var`` and ``/run`` (overlayfs only): dpkg and apt
  state start as this machine's installed set, and ``dpkg -i`` / ``apt-get install`` change one host only;
  none of this machine's apt sources, lists or caches show through (``/etc/apt/sources.list`` empty,
  ``sources.list.d``, ``/var/lib/apt/lists`` and ``/var/cache/apt`` opaque), and ``/usr/sbin/policy-rc.d``
  exits 101, so package scripts start no service (Ansible does);
- ``/var/lib/containerd`` and ``/var/lib/kubelet`` are bind mounts of directories in the host dir (a real
  filesystem: containerd's overlayfs snapshotter cannot sit on overlayfs), ``/run/containerd`` and
  ``/run/netns`` are tmpfs;
- cgroups: ``ip netns exec`` remounts ``/sys``, so this machine's cgroup hierarchies are mounted again in
  the host, and the kubelet's cgroup root ``/<netns>`` (``LabHost.kubelet_cgroup_root``) is made in each.
  Teardown kills every process in those cgroups (pods live in network namespaces of their own, so the
  lab's namespace is not enough to find them) and removes them; it finds them through this machine's own
  ``/sys/fs/cgroup``, which shows the same hierarchies, even when the lab's process died;
- ``/proc/sys`` is read-only but for ``net`` (namespaced) and the host name, and the global sysctls the
  kubelet sets are regular files bound over their ``/proc/sys`` entries: this machine's kernel settings
  never change, but for one: the kubelets all run as root against one inotify instance limit, so while kube
  labs run ``fs.inotify.max_user_instances`` is raised for them (``fit_inotify_limit``) and the machine's
  value is put back when the last one stops (or is swept);
- a CNI conflist (bridge ``cni0``, ``10.244.<index>.0/24``), ``/etc/worldland-lab/standin.env`` for the
  stand-in wrappers that lab-built packages ship, a fake PCI tree from the host's GPU plan under
  ``/opt/worldland-lab/sys``, and the device-plugin stand-in (``standins/device_plugin.py``, when present)
  started with the host. The only stand-in wrapper in ``/usr/local/sbin`` is ``systemctl``.

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
# /var whole, not just /var/lib and /var/log: apt and package scripts also write /var/cache, /var/backups
KUBE_OVERLAYS = ("/etc", "/root", "/opt", "/usr", "/var", "/run")
# host paths bound from real-filesystem directories in the host dir (kube mode)
KUBE_BINDS = {"/var/lib/containerd": "var-lib-containerd", "/var/lib/kubelet": "var-lib-kubelet"}
KUBE_TMPFS = ("/run/containerd", "/run/netns")
# none of this machine's content shows through these in a kube host
KUBE_OPAQUE = (
    "/etc/apt/sources.list.d",
    "/var/lib/apt/lists",
    "/var/cache/apt",
    "/etc/cni/net.d",
    "/var/lib/cni",
    "/opt/cni",
    "/etc/worldland-lab",
    "/opt/worldland-lab",
)
# global (not namespaced) sysctls the kubelet sets at start, with the values it wants
KUBELET_SYSCTLS = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
PROC_SYS_WRITABLE = ("/proc/sys/net", "/proc/sys/kernel/hostname", "/proc/sys/kernel/domainname")
DROPPED_CAPS = "-sys_module,-sys_boot,-sys_time"
CGROUP_BASE = "/sys/fs/cgroup"
STANDIN_ENV = "/etc/worldland-lab/standin.env"
CNI_CONFLIST = "/etc/cni/net.d/10-worldland-lab.conflist"
POD_NETWORK = "10.244.0.0/16"  # host i's pods get 10.244.i.0/24
PCI_ROOT = "/opt/worldland-lab/sys"  # the host's fake sysfs (a bind of <host dir>/pci)
PCI_DEVICES = PCI_ROOT + "/bus/pci/devices"
# PCI device ids of the models in tests/lab/gpus.py (0x0000 for a made-up model)
PCI_DEVICE_IDS = {
    "NVIDIA GeForce RTX 4090": 0x2684,
    "NVIDIA GeForce RTX 3090": 0x2204,
    "NVIDIA A100-SXM4-80GB": 0x20B2,
    "NVIDIA A100-SXM4-40GB": 0x20B0,
    "NVIDIA A100-PCIE-40GB": 0x20F1,
    "NVIDIA H100 80GB HBM3": 0x2330,
    "NVIDIA RTX A6000": 0x2230,
    "NVIDIA A10": 0x2236,
    "NVIDIA L4": 0x27B8,
    "Tesla T4": 0x1EB8,
}
DEVICE_PLUGIN = Path(__file__).resolve().parent / "standins" / "device_plugin.py"
DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
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
KUBE_KNOWN_UNITS = ["ssh.service"]  # in kube mode containerd and kubelet exist once their packages do
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


# --- cgroups (kube mode) -------------------------------------------------------------------------------


def _unescape_mount_path(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def cgroup_hierarchies() -> list[dict[str, Any]]:
    """This machine's cgroup mounts under /sys/fs/cgroup (mountinfo): path, type, options, root."""
    found: dict[str, dict[str, Any]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        path = _unescape_mount_path(fields[4])
        if path != CGROUP_BASE and not path.startswith(CGROUP_BASE + "/"):
            continue
        options = [o for o in tail[2].split(",") if o not in ("rw", "ro")]
        found[path] = {"path": path, "type": tail[0], "options": options, "root": fields[3]}
    return list(found.values())


def _cgroup_controllers() -> set[str]:
    with contextlib.suppress(OSError):
        lines = Path("/proc/cgroups").read_text().splitlines()[1:]
        return {line.split()[0] for line in lines if line.strip()}
    return set()


def cgroup_mount_lines(hierarchies: list[dict[str, Any]]) -> list[str]:
    """Shell lines that mount the same hierarchies again under /sys/fs/cgroup (an empty dir after
    ``ip netns exec`` remounted /sys): re-attaching an existing hierarchy shows the very same cgroups."""
    q = shlex.quote
    base = next((h for h in hierarchies if h["path"] == CGROUP_BASE), None)
    if base is not None:  # cgroup v2 only
        opts = ",".join(base["options"]) or "rw"
        return [f"mount -t {base['type']} -o {q(opts)} cgroup {CGROUP_BASE}"]
    lines = [f"mount -t tmpfs -o mode=755 {PREFIX}-cgroup {CGROUP_BASE}"]
    controllers = _cgroup_controllers()
    for h in sorted(hierarchies, key=lambda h: h["path"]):
        opts = list(h["options"])
        if h["type"] == "cgroup" and not controllers.intersection(opts):
            opts.insert(0, "none")  # a named hierarchy (name=systemd) without controllers
        lines.append(f"mkdir -p {q(h['path'])}")
        lines.append(f"mount -t {h['type']} -o {q(','.join(opts) or 'rw')} cgroup {q(h['path'])}")
    with contextlib.suppress(OSError):
        for entry in os.scandir(CGROUP_BASE):  # cpu -> cpu,cpuacct and the like
            if entry.is_symlink():
                lines.append(f"ln -s {q(os.readlink(entry.path))} {q(entry.path)}")
    return lines


def lab_cgroups(slot: int | None = None, names: Iterable[str] | None = None) -> list[Path]:
    """Kubelet cgroup roots of lab hosts (``/<netns>`` in each hierarchy), as this machine sees them: of
    the lab in ``slot`` (None: every lab), only those in ``names`` if given."""
    wanted = None if names is None else set(names)
    found = []
    for h in cgroup_hierarchies():
        if h["root"] != "/":
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(h["path"]):
                m = _NETNS_RE.match(entry.name)
                if not m or not entry.is_dir(follow_symlinks=False):
                    continue
                if (slot is None or int(m.group(1)) == slot) and (wanted is None or entry.name in wanted):
                    found.append(Path(entry.path))
    return found


def cgroup_pids(dirs: Iterable[Path]) -> set[int]:
    """Every process in these cgroups and the cgroups below them."""
    pids: set[int] = set()
    for top in dirs:
        for root, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in Path(root, "cgroup.procs").read_text().split() if p.isdigit()}
    return pids


def remove_cgroups(dirs: Iterable[Path], rounds: int = 10) -> list[Path]:
    """Kill every process in ``dirs`` (recursively, by PID), then remove them depth-first. Returns the
    cgroups still there after ``rounds`` tries (busy)."""
    left = list(dirs)
    for _ in range(rounds):
        pids = cgroup_pids(left)
        if pids:
            kill_pids(pids)
        for top in left:
            for root, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        left = [d for d in left if d.exists()]
        if not left:
            break
        time.sleep(0.1)
    return left


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
    slots |= {int(m.group(1)) for path in lab_cgroups() if (m := _NETNS_RE.match(path.name))}
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


def teardown_dir(lab_dir: str | Path) -> list[int]:
    """Tear down every registered lab whose directory is ``lab_dir``, its owner alive or not: for a lab
    whose owner was killed before it could stop it (a sweep would wait for the next lab start). Slots."""
    wanted = str(Path(lab_dir).resolve())
    removed = []
    with registry_lock():
        for path in REGISTRY.glob("slot-*.json"):
            slot = int(path.stem.split("-")[1])
            entry = _read_entry(slot)
            if entry is not None and entry.get("dir") == wanted:
                teardown_slot(slot, entry)
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
    cgroups = lab_cgroups(slot)  # kube mode: pods are in namespaces of their own, but in these cgroups
    pids = {p for ns in namespaces for p in netns_pids(ns)} | cgroup_pids(cgroups)
    pids |= {h["pid"] for h in entry.get("hosts", []) if alive(h.get("pid"), h.get("start"))}
    kill_pids(pids)
    remove_cgroups(cgroups)
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
    with contextlib.suppress(OSError, ValueError):
        fit_inotify_limit()


# Every kube host runs a real kubelet and containerd as root, and inotify instances are limited per user
# (fs.inotify.max_user_instances, 128 by default): a kubelet takes about 9 (cAdvisor, its certificate and
# config watchers), so the 15th kubelet of a 20-host lab failed to start ("inotify_init: too many open
# files"). While kube labs run the limit is at least what the machine had plus INOTIFY_PER_KUBE_HOST per
# registered kube host; the machine's own value is saved in the registry and put back when none is left.
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_SAVED = "inotify-max-user-instances"
INOTIFY_MACHINE_SHARE = 128  # left to the rest of the machine (the kernel's default limit)
INOTIFY_PER_KUBE_HOST = 16


def fit_inotify_limit() -> int | None:
    """Raise the inotify instance limit for the kube hosts registered, or put the machine's value back when
    there are none. Runs under the registry lock. Returns the limit written, None when nothing changed."""
    saved_path = REGISTRY / INOTIFY_SAVED
    entries = [_read_entry(int(p.stem.split("-")[1])) for p in REGISTRY.glob("slot-*.json")]
    kube_hosts = sum(int(e.get("kube_hosts", 0)) for e in entries if e)
    current = int(INOTIFY_LIMIT.read_text())
    if kube_hosts == 0:
        if not saved_path.exists():
            return None
        original = int(saved_path.read_text())
        INOTIFY_LIMIT.write_text(f"{original}\n")
        saved_path.unlink()
        return original
    needed = INOTIFY_MACHINE_SHARE + INOTIFY_PER_KUBE_HOST * kube_hosts
    if current >= needed:
        return None
    if not saved_path.exists():
        saved_path.write_text(f"{current}\n")
    INOTIFY_LIMIT.write_text(f"{needed}\n")
    return needed


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
    for path in lab_cgroups(slot):
        with contextlib.suppress(OSError):
            found.add(("cgroup", str(path), path.stat().st_ino))
    for line in lab_resources()["processes"]:
        if f"{lab_dir}/" in line:
            pid = int(line.split()[0])
            found.add(("process", str(pid), proc_start(pid)))
    return found


def lab_resources() -> dict[str, list[str]]:
    """Every namespace, link, route, kubelet cgroup root and sshd/ssh-master process on this machine
    bearing the lab prefix."""
    namespaces = [ns for ns in netns_names() if _NETNS_RE.match(ns)]
    links = [link["ifname"] for link in ip_json("link", "show") if _LINK_RE.match(link.get("ifname", ""))]
    procs = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cmd.startswith(("sshd:", SSHD, "ssh:", "ssh ")) and f"/{PREFIX}" in cmd:
                procs.append(f"{pid_dir.name} {cmd.strip()}")
    routes = [r["dst"] for r in ip_json("route", "show", "table", "all", "proto", ROUTE_PROTO)]
    cgroups = [str(p) for p in lab_cgroups()]
    return {
        "namespaces": namespaces,
        "links": links,
        "processes": procs,
        "routes": routes,
        "cgroups": cgroups,
    }


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
        """Where this host's copy of ``path`` lives on this machine (written files only, for overlays;
        in kube mode, /var/lib/containerd and /var/lib/kubelet are whole directories of the host dir)."""
        if self.lab.kube:
            for mount, sub in KUBE_BINDS.items():
                if path == mount or path.startswith(mount + "/"):
                    return self.dir / sub / path[len(mount) :].lstrip("/")
        return self.dir / "upper" / path.lstrip("/")

    @property
    def kubelet_cgroup_root(self) -> str | None:
        """Kube mode: the cgroup the kubelet's ``cgroupRoot`` must name (it exists in every hierarchy)."""
        return f"/{self.netns}" if self.lab.kube else None

    @property
    def pod_cidr(self) -> str | None:
        """Kube mode: the pod addresses of the host's CNI conflist."""
        return f"10.244.{self.index}.0/24" if self.lab.kube else None

    @property
    def inventory_vars(self) -> dict[str, Any]:
        return {"ansible_host": self.address, **self.lab.connection_vars()}

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
            if self.lab.kube:
                write_pci_tree(self.dir / "pci", cfg["gpus"])
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


def write_pci_tree(root: Path, gpus: list[dict[str, Any]]) -> None:
    """``<root>/bus/pci/devices/<address>/{vendor,device,class}`` as sysfs has them: one NVIDIA 3D
    controller per GPU (at its ``pci_bus_id``) and a host bridge that is not NVIDIA's. ``root`` itself
    stays (it is the source of a bind mount in a running host); what is below it is replaced."""
    root.mkdir(parents=True, exist_ok=True)
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    devices = root / "bus" / "pci" / "devices"
    entries = {"0000:00:00.0": ("0x8086", "0x29c0", "0x060000")}
    for gpu in gpus:
        address = "0000:" + gpu["pci_bus_id"].split(":", 1)[1].lower()
        entries[address] = ("0x10de", f"0x{PCI_DEVICE_IDS.get(gpu['name'], 0):04x}", "0x030200")
    for address, (vendor, device, klass) in entries.items():
        d = devices / address
        d.mkdir(parents=True)
        for name, value in (("vendor", vendor), ("device", device), ("class", klass)):
            (d / name).write_text(value + "\n")


# --- the lab -------------------------------------------------------------------------------------------


class Lab:
    """``with Lab(hosts=3, gpus="A100:2") as lab: ...`` - or ``start()`` / ``stop()``.

    ``dir``: where keys, inventory, host configs and logs go (a fresh temporary directory by default; it
    is removed at teardown unless ``WORLDLAND_LAB_KEEP=1``). ``etc_mode``: ``"auto"`` (overlays when the
    kernel allows them on ``dir``'s filesystem), ``"overlay"`` or ``"bind"``. ``kube``: hosts for real
    packages, containerd and kubelet (module docstring; overlays only). ``device_plugin``: the script
    a kube host starts with ``--plugin-dir /var/lib/kubelet/device-plugins`` if it exists (default
    ``standins/device_plugin.py``; None: none).
    """

    def __init__(
        self,
        hosts: int = 1,
        gpus: str | list[str | HostGpus] | GpuPlan | None = None,
        dir: str | Path | None = None,
        etc_mode: str = "auto",
        python: str | None = None,
        kube: bool = False,
        device_plugin: str | Path | None = DEVICE_PLUGIN,
    ) -> None:
        if not 0 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be between 0 and {MAX_HOSTS}")
        if etc_mode not in ("auto", "overlay", "bind"):
            raise ValueError("etc_mode must be auto, overlay or bind")
        if kube and etc_mode == "bind":
            raise ValueError("kube mode needs overlays (etc_mode auto or overlay)")
        self.kube = kube
        # kube mode: started in each host when the file exists (None: never)
        self.device_plugin = Path(device_plugin).resolve() if device_plugin else None
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
        self.inotify_limit: int | None = None  # fs.inotify.max_user_instances, when this lab raised it
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
    def overlays(self) -> tuple[str, ...]:
        return KUBE_OVERLAYS if self.kube else OVERLAYS

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
        for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "setpriv", SSHD):
            if shutil.which(tool) is None:
                raise LabError(
                    f"{tool} is missing (make install / scripts/install-system-deps.sh installs it)"
                )
        if self.kube:
            self._check_cgroups()
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

    def _check_cgroups(self) -> None:
        """Kube mode mounts this machine's hierarchies in each host; teardown finds the hosts' cgroups
        through this machine's own view of them, which must show each hierarchy from its root."""
        hierarchies = cgroup_hierarchies()
        if not hierarchies:
            raise LabError(f"kube mode needs cgroups: nothing is mounted under {CGROUP_BASE}")
        hidden = [h["path"] for h in hierarchies if h["root"] != "/"]
        if hidden:
            raise LabError(f"kube mode: {', '.join(hidden)} show only part of their hierarchy here")

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
        if self.etc_mode == "auto" or self.kube:
            works = self._overlay_works()
            if self.kube and not works:
                raise LabError(f"kube mode needs overlayfs, which this kernel does not allow on {self.dir}")
            if self.etc_mode == "auto":
                self.etc_mode = "overlay" if works else "bind"
        self._entry["etc_mode"] = self.etc_mode
        self._entry["kube"] = self.kube
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
        if self.kube:
            with registry_lock():
                self._entry["kube_hosts"] = len(self.hosts) + count
                _write_entry(self._entry)
                limit = fit_inotify_limit()
            if limit is not None:
                self.inotify_limit = limit
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
        for sub in ("upper", "work", *KUBE_BINDS.values(), "sysctl", "pci"):
            shutil.rmtree(host.dir / sub, ignore_errors=True)
        upper = host.dir / "upper"
        for path in self.overlays if self.etc_mode == "overlay" else (*BIND_PRIVATE, "/usr/local/sbin"):
            host.private_path(path).mkdir(parents=True, exist_ok=True)
            if self.etc_mode == "overlay":
                (host.dir / "work" / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        opaque = (*BIND_PRIVATE, *KUBE_OPAQUE) if self.kube else BIND_PRIVATE
        for path in (*opaque, "/usr/local/sbin"):  # present, empty, on every host (not on this machine)
            private = upper / path.lstrip("/") if self.etc_mode == "overlay" else host.private_path(path)
            private.mkdir(parents=True, exist_ok=True)
            if self.etc_mode == "overlay" and path != "/usr/local/sbin":
                # Opaque: this machine's own /etc/worldland (say) never shows through to a host.
                os.setxattr(private, "trusted.overlay.opaque", b"y")
        if self.kube:
            self._prepare_kube_host(host)
        if self.etc_mode == "overlay":
            # for the stand-in wrappers that lab-built packages ship (they source it with set -a)
            env = {
                "WORLDLAND_LAB_HOST_CONFIG": str(host.config_path),
                "WORLDLAND_LAB_PYTHON": self.python,
                "WORLDLAND_LAB_STANDINS": str(STANDIN_DIR),
            }
            standin_env = upper / STANDIN_ENV.lstrip("/")
            standin_env.parent.mkdir(parents=True, exist_ok=True)
            standin_env.write_text(
                "# worldland lab (tests/lab): where this host's stand-ins find their settings\n"
                + "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
            )
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
        # kube mode: real packages bring kubeadm (and lab-built ones nvidia-smi) into /usr/bin
        standins = {"systemctl": STANDINS["systemctl"]} if self.kube else STANDINS
        for command, script in standins.items():
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

    def _prepare_kube_host(self, host: LabHost) -> None:
        """What a kube host has beyond the overlays: mount points, apt without this machine's sources,
        policy-rc.d, the sysctl files, the PCI tree and the CNI conflist."""
        upper = host.dir / "upper"
        for sub in KUBE_BINDS.values():
            (host.dir / sub).mkdir()
        for path in (*KUBE_BINDS, *KUBE_TMPFS, PCI_ROOT):
            (upper / path.lstrip("/")).mkdir(parents=True, exist_ok=True)  # mount points
        (upper / "etc/apt").mkdir(parents=True, exist_ok=True)
        (upper / "etc/apt/sources.list").write_text("")
        for path in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
            (upper / path).mkdir(parents=True, exist_ok=True)
        policy = upper / "usr/sbin/policy-rc.d"
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(
            "#!/bin/sh\n# worldland lab host: package scripts start no service (Ansible does)\nexit 101\n"
        )
        policy.chmod(0o755)
        (host.dir / "sysctl").mkdir()
        for key, value in KUBELET_SYSCTLS.items():
            (host.dir / "sysctl" / key).write_text(value + "\n")
        write_pci_tree(host.dir / "pci", host.gpus.records(host.name))
        # Stands in for the cluster's CNI DaemonSet (flannel, calico, ...), which would write a conflist
        # like this on a real node: without one the node never turns Ready.
        conflist = {
            "cniVersion": "0.4.0",
            "name": "worldland-lab",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": host.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        (upper / CNI_CONFLIST.lstrip("/")).write_text(json.dumps(conflist, indent=2) + "\n")

    def _host_config(self, host: LabHost) -> dict[str, Any]:
        kube = {
            "kubelet_cgroup_root": host.kubelet_cgroup_root,
            "pci_devices_dir": PCI_DEVICES,
            "pod_cidr": host.pod_cidr,
            "cni_conflist": CNI_CONFLIST,
            "device_plugin_dir": DEVICE_PLUGIN_DIR,
        }
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
            "known_units": list(KUBE_KNOWN_UNITS if self.kube else KNOWN_UNITS),
            "units_state": str(host.dir / "units.json"),
            "standin_log": str(host.dir / "standin.log"),
            "upper_dir": str(host.dir / "upper"),
            "lab_mode": "kube" if self.kube else "standins",
            "standin_env": STANDIN_ENV if self.etc_mode == "overlay" else None,
            "kube": {k: v for k, v in self.attached.items() if k == "kubeconfig"},
            "redis_url": self.attached.get("redis_url"),
        } | (kube if self.kube else {})

    def _mount_script(self, host: LabHost) -> str:
        lines = ["set -e"]
        if self.etc_mode == "overlay":
            for path in self.overlays:
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
        if self.kube:
            lines += self._kube_mount_lines(host)
        lines.append(f"echo {host.name} > /proc/sys/kernel/hostname")
        if self.kube and self.device_plugin is not None and self.device_plugin.is_file():
            lines += self._device_plugin_lines(host)
        lines.append(f"exec {SSHD} -D -e -f {shlex.quote(str(host.dir / 'sshd_config'))}")
        return "\n".join(lines)

    def _kube_mount_lines(self, host: LabHost) -> list[str]:
        q = shlex.quote
        lines = [f"mount --bind {q(str(host.dir / sub))} {path}" for path, sub in KUBE_BINDS.items()]
        lines += [
            f"mount -t tmpfs -o mode=0755 {PREFIX}-{p.strip('/').replace('/', '-')} {p}" for p in KUBE_TMPFS
        ]
        lines.append(f"mount --bind {q(str(host.dir / 'pci'))} {PCI_ROOT}")
        # Pods have no masquerading (ipMasq false): a reply to a pod address would leave this machine
        # through its default route. So pods reach nothing beyond their host (local delivery comes first).
        lines.append("ip rule del priority 100 2>/dev/null || :")  # the netns outlives a host restart
        lines.append(f"ip rule add from {POD_NETWORK} iif cni0 priority 100 unreachable")
        hierarchies = cgroup_hierarchies()
        lines += cgroup_mount_lines(hierarchies)
        root = host.kubelet_cgroup_root
        for h in hierarchies:
            lines.append(f"mkdir -p {q(h['path'] + root)}")
            if h["type"] == "cgroup" and "cpuset" in h["options"]:  # an empty cpuset admits no process
                for name in ("cpuset.cpus", "cpuset.mems"):
                    lines.append(f"cat {q(h['path'])}/{name} > {q(h['path'] + root)}/{name}")
        # /proc/sys read-only but for what is this host's own; the kubelet's global sysctls are files
        lines += ["mount --bind /proc/sys /proc/sys", "mount -o remount,bind,ro /proc/sys"]
        for path in PROC_SYS_WRITABLE:
            lines += [f"mount --bind {path} {path}", f"mount -o remount,bind,rw {path}"]
        for key in KUBELET_SYSCTLS:
            lines.append(
                f"mount --bind {q(str(host.dir / 'sysctl' / key))} /proc/sys/{key.replace('.', '/')}"
            )
        return lines

    def _device_plugin_lines(self, host: LabHost) -> list[str]:
        """The device-plugin stand-in, in the host's namespaces (so teardown by namespace ends it)."""
        q = shlex.quote
        env = [
            "PATH=" + HOST_PATH,
            "HOME=/root",
            "LANG=C.UTF-8",
            f"WORLDLAND_LAB_HOST_CONFIG={host.config_path}",
        ]
        argv = [self.python, str(self.device_plugin), "--plugin-dir", DEVICE_PLUGIN_DIR]
        log = host.dir / "device-plugin.log"
        command = f"env -i {' '.join(q(e) for e in env)} {shlex.join(argv)}"
        return [
            f"setsid {command} >> {q(str(log))} 2>&1 < /dev/null &",
            f"echo $! > {q(str(host.dir / 'device-plugin.pid'))}",
        ]

    def _start_sshd(self, host: LabHost) -> None:
        argv = ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "setpriv", "--bounding-set", DROPPED_CAPS,
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

    def connection_vars(self) -> dict[str, Any]:
        """Ansible's connection vars for every host of this lab (all but ``ansible_host``): root over SSH
        with the lab's key, its host keys only, and its control sockets."""
        common = [
            "-F /dev/null",
            f"-o UserKnownHostsFile={self.known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            f"-o ControlPath={self.dir}/cp/%r@%h",
        ]
        return {
            "ansible_port": 22,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": " ".join(common),
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def restart_hosts(self, hosts: list[LabHost] | None = None, keep_config: bool = False) -> None:
        """Fresh hosts: close their SSH masters, kill every process in their namespaces, wipe their
        private directories and stand-in state, start sshd again (same address, same host key)."""
        hosts = self.hosts if hosts is None else hosts
        for host in hosts:
            subprocess.run([*host.ssh_argv()[:-1], "-O", "exit", f"root@{host.address}"], capture_output=True,
                           timeout=10, check=False)  # fmt: skip
        cgroups = lab_cgroups(self.slot, [h.netns for h in hosts]) if self.kube else []
        kill_pids({p for h in hosts for p in netns_pids(h.netns)} | cgroup_pids(cgroups))
        remove_cgroups(cgroups)
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
            "kube": self.kube,
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
        lab = cls(
            hosts=0,
            dir=dir,
            etc_mode=state["etc_mode"],
            python=state["python"],
            kube=state.get("kube", False),
        )
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
            private = "overlays on " + ", ".join(self.overlays)
        else:
            private = "bind mounts on " + ", ".join(BIND_PRIVATE)
        lines = [
            f"lab {self.slot}: bridge {self.bridge} {self.gateway}/24 (servers for the hosts listen here)",
            f"  dir        {self.dir}",
            f"  inventory  {self.inventory}",
            f"  ssh        ssh -F /dev/null -i {self.key} -o UserKnownHostsFile={self.known_hosts} root@ADDR",
            f"  private    {private}",
        ]
        if self.kube:
            lines.append(
                "  mode       kube: real packages, containerd and kubelet (cgroup root /<netns> per host)"
            )
            if self.inotify_limit is not None:
                lines.append(
                    f"  inotify    fs.inotify.max_user_instances raised to {self.inotify_limit} for the "
                    "kubelets (the machine's value is put back when no kube lab is left)"
                )
        up = self.is_up()
        for h in self.hosts:
            lines.append(
                f"  {h.name:<10} {h.address:<15} pid {h.pid:<7} {'up' if up[h.name] else 'DOWN':<4} "
                f"gpus {h.gpus}"
            )
        return "\n".join(lines)

"""Everything ``playbooks/onboard.yml`` needs on one machine: kube-mode lab hosts, the lab's signed apt
repository served on the gateway, a Redis and the real control plane reachable there, and an inventory
directory (the worldland plugin + group_vars pointing the roles at the lab's stand-ins).

    with OnboardingLab(hosts=3, gpus=["A100:2", "RTX-4090:1", "H100:2"]) as env:
        env.register_all()                 # registrations as the Go agent publishes them
        env.approve_all()                  # the listener with an auto policy
        env.playbook("onboard.yml")        # real ansible-playbook over real SSH, real kubeadm join

What stands in for what (said in group_vars too): the GPUs (a PCI tree, nvidia-smi, the device plugin),
the NVIDIA driver and container toolkit packages (lab-built, carrying stand-ins), kernel changes that would
reach this machine (modprobe, sysctl, update-initramfs), the cluster's CNI (a bridge conflist) and NVIDIA's
device-plugin DaemonSet (the lab pulls no images). Everything else is real: Debian's containerd, runc,
CNI plugins and iptables from the repository, kubeadm/kubelet v1.32.13 from ``../shared/kube``.

Where ``../shared/kube`` is absent (``testkit.realkube.available()``; ``WORLDLAND_REALKUBE=0`` pretends so)
the cluster is the project's Kubernetes API test server (``testkit/kube_server``) on the gateway instead,
and the kubelet/kubeadm packages carry the lab's stand-ins: no real kubelet runs (the package's only sleeps);
the kubeadm stand-in checks the token and the pinned CA and registers the Node itself, Ready with the host's
GPUs as ``nvidia.com/gpu`` allocatable. ``kube_description`` says which cluster it is, ``kube_real`` tells
them apart. The test server has no RBAC, so there the controller side's kubeconfig holds its admin token.

From the command line (the roles' Molecule scenarios, tests/lab/molecule/), needs root::

    python -m tests.lab.onboarding up --dir D [--hosts N] [--gpus SPEC] [--no-cluster]   # D/onboarding.json
    python -m tests.lab.onboarding register --dir D     # register_all()
    python -m tests.lab.onboarding approve --dir D      # approve_all()
    python -m tests.lab.onboarding down --dir D         # everything gone, D too; exit 1 if anything stayed

``up`` starts ``serve`` (the lab held by one process, in a session of its own) and returns once the lab
is ready; ``down`` ends it with SIGTERM and then removes by PID and by name whatever a killed ``serve``
left: the processes recorded or working in D (the Redis, the control plane), the lab's namespaces,
cgroups and links (by its directory), and D. ``--no-cluster``: hosts and repository only, no Redis and no
control plane. The Redis also listens on ``D/redis.sock``, the kubeconfig is ``D/lab/worldland.conf`` (the
token of deploy/kubernetes's ServiceAccount ``worldland`` alone, the admin's with the test server;
``D/lab/admin.conf`` is the admin's): paths
known before the lab starts, for settings read once before it (Molecule's ``molecule.yml``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from testkit.agent import Agent
from testkit.factories import registration_dict
from testkit.kube_server.server import KubeApiServer
from testkit.realkube import RealControlPlane, available
from testkit.realkube_rbac import service_account_kubeconfig
from testkit.redis_server import RedisServer
from tests.lab import aptrepo
from tests.lab.lab import Lab, LabError, LabHost, alive, kill_pids, netns_names, proc_start, teardown_dir
from worldland.state.connection import connect

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
KEY_PREFIX = "worldland:"
# in-host paths the lab's stand-ins use (roles read them in place of sysfs and /proc)
LAB_PCI_DIR = "/opt/worldland-lab/sys/bus/pci/devices"
LAB_MODULE_VERSION = "/var/lib/worldland-lab/nvidia/module-version"
LAB_PROC_MODULES = "/var/lib/worldland-lab/proc-modules"
LAB_PROC_SWAPS = "/var/lib/worldland-lab/proc-swaps"
# the lab's one repository under the paths of the repositories it stands in for
REPOSITORIES = {
    "nvidia_driver": "nvidia/",
    "container_runtime": "debian/",
    "container_runtime_nvidia": "libnvidia-container/",
    "kubernetes_node": "kubernetes/",
}
STANDINS = Path(__file__).resolve().parent / "standins"
# the command line's files in its directory D (the lab itself is D/lab)
STATE_FILE = "onboarding.json"
SERVE_PID = "serve.pid"
SERVE_LOG = "serve.log"


@dataclass
class OnboardingLab:
    hosts: int = 3
    gpus: str | list[str] | None = None
    # the lab's directory (None: a fresh temporary one); a Unix socket the Redis also listens on
    dir: str | Path | None = None
    redis_socket: str | Path | None = None
    # False: no Redis and no control plane (nor inventory): hosts and repository only, for the roles that
    # install packages
    cluster: bool = True
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> OnboardingLab:
        status = available()
        self.kube_real = bool(status)
        try:
            lab = Lab(hosts=self.hosts, gpus=self.gpus, kube=True, dir=self.dir)
            self.lab = self.stack.enter_context(lab)
            self.repo = aptrepo.lab_repository(self.lab.dir / "repo")
            for name in REPOSITORIES:  # one repository, served as the three the roles know by default
                with contextlib.suppress(FileExistsError):
                    (self.repo.root / REPOSITORIES[name].rstrip("/")).symlink_to(".")
            self.served = self.stack.enter_context(aptrepo.serve(self.repo.root, self.lab.gateway))
            for host in self.lab.hosts:
                self.prepare(host)
            if self.cluster:
                redis_server = RedisServer(also_bind=(self.lab.gateway,), unix_socket=self.redis_socket)
                self.redis = self.stack.enter_context(redis_server)
                self.redis_url = self.redis.url
                if self.kube_real:
                    self.start_real_control_plane()
                else:
                    self.start_test_server(status.reason)
                if self.repo.kube_binaries == aptrepo.STANDIN_KUBE:
                    # LAB SHORTCUT: the kubeadm stand-in reads tokens and creates Nodes as the admin
                    self.lab.attach(kubeconfig=self.admin_kubeconfig)
                self.inventory = self.write_inventory()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def start_real_control_plane(self) -> None:
        self.kube = self.stack.enter_context(RealControlPlane(extra_addresses=(self.lab.gateway,)))
        self.kube_description = self.kube.description
        self.admin_kubeconfig = self.kube.write_kubeconfig(self.lab.dir / "admin.conf", self.lab.gateway)
        # the controller side runs as it runs in a cluster: deploy/kubernetes's ServiceAccount alone
        self.kubeconfig = service_account_kubeconfig(
            self.kube, self.lab.dir / "worldland.conf", address=self.lab.gateway
        )
        self.kubeconfig_identity = "deploy/kubernetes's ServiceAccount token alone (least privilege)"

    def start_test_server(self, why: str) -> None:
        """The Kubernetes API test server on the gateway (and 127.0.0.1), advertised there in cluster-info."""
        self.kube = self.stack.enter_context(KubeApiServer(extra_ips=(self.lab.gateway,)))
        self.kube_description = f"the project's Kubernetes API test server, testkit/kube_server ({why})"
        self.admin_kubeconfig = self.kube.write_kubeconfig(self.lab.dir / "admin.conf", self.lab.gateway)
        # the same place as with the real one (Molecule reads it), the test server's admin token in it
        self.kubeconfig = self.kube.write_kubeconfig(self.lab.dir / "worldland.conf", self.lab.gateway)
        self.kubeconfig_identity = "the test server's admin token (it has no RBAC)"

    @classmethod
    def load(cls, state_dir: str | Path) -> OnboardingLab:
        """The lab ``serve`` runs in ``state_dir`` (its hosts, Redis, kubeconfig), seen from another
        process: for register_all, approve_all, fleet and env, not for stopping it (``down``)."""
        state = read_state(state_dir)
        if not state["redis_url"]:
            raise LabError(f"the onboarding lab in {state_dir} runs without Redis and control plane")
        env = cls(hosts=len(state["hosts"]), dir=state["lab_dir"])
        env.lab = Lab.load(state["lab_dir"])
        env.redis_url = state["redis_url"]
        env.kubeconfig = Path(state["kubeconfig"])
        env.inventory = Path(state["inventory"])
        return env

    def state(self) -> dict[str, Any]:
        """What ``up`` reports and ``down`` cleans up after: addresses, files, variables, processes."""
        cluster: dict[str, Any] = {"redis_url": None, "kubeconfig": None, "inventory": None}
        processes: dict[str, int] = {}
        if self.cluster:
            processes = {
                "redis-server": self.redis.process.pid if self.redis.process else 0,
                # the test server runs in this process: no processes of its own
                **(self.kube.pids if isinstance(self.kube, RealControlPlane) else {}),
            }
            cluster = {
                "redis_url": self.redis.url,
                "redis_unix_url": self.redis.unix_url if self.redis.unix_socket else None,
                "kubeconfig": str(self.kubeconfig),
                "inventory": str(self.inventory),
            }
        return {
            **cluster,
            "lab_dir": str(self.lab.dir),
            "slot": self.lab.slot,
            "gateway": self.lab.gateway,
            "key": str(self.lab.key),
            "known_hosts": str(self.lab.known_hosts),
            "hosts": [
                {**h.to_json(), "provider_id": self.provider_id(h), "inventory_vars": h.inventory_vars}
                for h in self.lab.hosts
            ],
            "role_vars": self.role_vars(),
            "processes": [{"name": n, "pid": p, "start": proc_start(p)} for n, p in processes.items() if p],
        }

    # -- the hosts -----------------------------------------------------------------------------------------

    @staticmethod
    def prepare(host: LabHost) -> None:
        """What the lab stands in for inside each host, written before any role runs."""
        facts = host.private_path("/etc/ansible/facts.d/worldland_lab.fact")
        facts.parent.mkdir(parents=True, exist_ok=True)
        facts.write_text(json.dumps({"kubelet_cgroup_root": host.kubelet_cgroup_root}) + "\n")
        # this machine's kernel has what /sys/module shows (no /proc/modules here): the stand-in starts there
        modules = host.private_path(LAB_PROC_MODULES)
        modules.parent.mkdir(parents=True, exist_ok=True)
        loaded = [m for m in ("overlay", "br_netfilter", "nvidia") if Path("/sys/module", m).is_dir()]
        modules.write_text("".join(f"{m} 16384 0 - Live 0x0000000000000000\n" for m in loaded))
        # this machine's swap is not a lab host's to turn off: the host sees a swaps file of its own
        swaps = host.private_path(LAB_PROC_SWAPS)
        swaps.write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
        host.configure(proc_modules=LAB_PROC_MODULES, proc_swaps=LAB_PROC_SWAPS)
        for command in ("modprobe", "sysctl", "update-initramfs", "swapoff"):
            wrapper = host.private_path(f"/usr/local/sbin/{command}")
            wrapper.write_text(
                "#!/bin/sh\n"
                f"# worldland lab stand-in for {command} (tests/lab/standins/kernel.py): a lab host\n"
                "# shares this machine's kernel, so its kernel state is kept in the host's directory\n"
                f"WORLDLAND_LAB_HOST_CONFIG={shlex.quote(str(host.config_path))}\n"
                "export WORLDLAND_LAB_HOST_CONFIG\n"
                f"exec {shlex.quote(host.lab.python)} {shlex.quote(str(STANDINS / 'kernel.py'))} "
                f'{command} "$@"\n'
            )
            wrapper.chmod(0o755)

    def provider_id(self, host: LabHost) -> str:
        return f"lab-{host.name}"

    def registration(self, host: LabHost) -> dict[str, Any]:
        models = host.gpus.models
        return registration_dict(
            self.provider_id(host),
            hostname=host.name,
            gpu_name=models[0].name if models else "NVIDIA GeForce RTX 4090",
            gpus=len(models),
            public_ip=host.address,
        )

    # -- control plane -------------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """What the controller's plugins read: Redis, key prefix, kubeconfig (API at the gateway)."""
        return {
            **os.environ,
            "WORLDLAND_REDIS_URL": self.redis_url,
            "WORLDLAND_KEY_PREFIX": KEY_PREFIX,
            "WORLDLAND_KUBECONFIG": str(self.kubeconfig),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }

    def register_all(self) -> None:
        agent = Agent(redis.Redis.from_url(self.redis_url, decode_responses=True), _names())
        for host in self.lab.hosts:
            agent.register(self.registration(host))

    def approve_all(self) -> None:
        """The listener, with an auto policy that admits lab (private) addresses, answers them all."""
        from testkit.listener import drain, make_listener
        from worldland.domain.policy import ApprovalMode, ApprovalPolicy
        from worldland.kube import KubeClient
        from worldland.state.fleet import Fleet
        from worldland.state.keys import Keys

        client = connect(self.redis_url)
        cluster = KubeClient.from_kubeconfig(self.kubeconfig)
        try:
            policy = ApprovalPolicy(mode=ApprovalMode.AUTO, allow_private_ips=True)
            listener = make_listener(Fleet.open(client, Keys(KEY_PREFIX)), _names(), policy, cluster=cluster)
            drain(listener)
        finally:
            cluster.close()
            client.close()

    def fleet(self) -> Any:
        from worldland.state.fleet import Fleet
        from worldland.state.keys import Keys

        return Fleet.open(connect(self.redis_url), Keys(KEY_PREFIX))

    # -- inventory -----------------------------------------------------------------------------------------

    def group_vars(self) -> dict[str, Any]:
        """The inventory's group_vars: how to reach the hosts, and the roles pointed at the stand-ins."""
        return {**self.connection_vars(), **self.role_vars()}

    def connection_vars(self) -> dict[str, Any]:
        return self.lab.connection_vars()

    def role_vars(self) -> dict[str, Any]:
        """The roles' variables that point them at the lab's repository and stand-ins."""
        key = self.repo.key_path.read_text()

        def source(role: str) -> dict[str, Any]:
            return {
                f"{role}_repo_url": self.served.url + REPOSITORIES[role],
                f"{role}_repo_suites": [self.repo.suite],
                f"{role}_repo_components": [self.repo.component],
                f"{role}_repo_key": key,
            }

        return {
            "kubernetes_version": "1.32.13",
            # the lab's signed repository stands in for NVIDIA's, the distribution's and pkgs.k8s.io
            "nvidia_driver_packages": [f"nvidia-driver-{aptrepo.BRANCHES[0]}-server"],
            **source("nvidia_driver"),
            "nvidia_driver_pci_devices_dir": LAB_PCI_DIR,
            "nvidia_driver_module_version_file": LAB_MODULE_VERSION,
            **source("container_runtime"),
            **source("container_runtime_nvidia"),
            # no systemd in a lab host; root here lacks CAP_SYS_RESOURCE (../shared/kube/README.md)
            "container_runtime_cgroup_driver": "cgroupfs",
            "container_runtime_restrict_oom_score_adj": True,
            **source("kubernetes_node"),
            "kubernetes_node_cgroup_driver": "cgroupfs",
            "kubernetes_node_proc_modules": LAB_PROC_MODULES,
            "kubernetes_node_proc_swaps": LAB_PROC_SWAPS,
            "kubernetes_node_ip": "{{ ansible_host }}",
            "kubernetes_node_kubelet_extra_args": [
                "--cgroup-root={{ ansible_local.worldland_lab.kubelet_cgroup_root }}"
            ],
            "worldland_nvidia_device_plugin": False,
            "worldland_nvidia_device_plugin_note": (
                "the lab pulls no images: its device-plugin stand-in, tests/lab/standins/device_plugin.py, "
                "serves nvidia.com/gpu on each host"
            ),
        }

    def write_inventory(self, statuses: tuple[str, ...] = ("approved",), name: str = "inventory") -> Path:
        directory = self.lab.dir / name
        (directory / "group_vars").mkdir(parents=True, exist_ok=True)
        plugin = {
            "plugin": "worldland.provider.worldland",
            "redis_url": self.redis_url,
            "key_prefix": KEY_PREFIX,
            "statuses": list(statuses),
        }
        (directory / "worldland.yml").write_text(yaml.safe_dump(plugin, sort_keys=False))
        (directory / "group_vars" / "all.yml").write_text(
            "# written by tests/lab/onboarding.py: the roles pointed at the lab's stand-ins\n"
            + yaml.safe_dump(self.group_vars(), sort_keys=False, width=200)
        )
        return directory

    def playbook(
        self,
        name: str = "onboard.yml",
        *args: str,
        inventory: Path | None = None,
        timeout: float = 900,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        playbook = str(REPO / "playbooks" / name)
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory or self.inventory), playbook, *args],
            cwd=REPO, env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip


def _names() -> Any:
    from worldland.protocol.streams import StreamNames

    return StreamNames()


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- the command line (the roles' Molecule scenarios) --------------------------------------------------------


def read_state(state_dir: str | Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise LabError(f"no onboarding lab in {state_dir} (python -m tests.lab.onboarding up)") from None
    return state


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, state_dir / STATE_FILE)


def running(pid: int, start: int | None) -> bool:
    """That process (PID and start time; None: any start) is there and not a zombie - one that exited and
    waits for init to reap it is gone."""
    if start is not None and not alive(pid, start):
        return False
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def _serve_pid(state_dir: Path) -> tuple[int, int | None] | None:
    with contextlib.suppress(OSError, ValueError):
        pid, start = (state_dir / SERVE_PID).read_text().split()
        return int(pid), int(start)
    return None


def serve(state_dir: Path, hosts: int, gpus: str | None, cluster: bool = True) -> int:
    """Hold an OnboardingLab until SIGTERM, SIGINT or SIGHUP; its state in ``state_dir``. Temporary files
    (the Redis's and the control plane's directories) go under ``state_dir`` too, so removing it after
    a ``kill -9`` leaves nothing."""
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not stopping:  # once: a second signal must not break off the teardown
            stopping.append(signum)
            raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    scratch = state_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None
    try:
        lab = OnboardingLab(hosts, gpus, state_dir / "lab", state_dir / "redis.sock", cluster)
        with lab as env:
            me = {"pid": os.getpid(), "start": proc_start(os.getpid())}
            _write_state(state_dir, env.state() | {"serve": me})
            print(f"onboarding lab up: {env.lab.summary()}", flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt as stopped:
        print(f"onboarding lab down ({stopped})", flush=True)
        return 0


def up(
    state_dir: Path, hosts: int, gpus: str | None, cluster: bool = True, timeout: float = 300
) -> dict[str, Any]:
    """``serve`` in a session of its own (it outlives this process), once it is ready: its state, and
    ``started`` (false: it was up already). On failure or timeout everything is taken down again."""
    serving = _serve_pid(state_dir)
    if serving and running(*serving) and (state_dir / STATE_FILE).exists():
        return read_state(state_dir) | {"started": False}
    down(state_dir)  # what a dead one left
    state_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "tests.lab.onboarding", "serve", "--dir", str(state_dir)]
    argv += ["--hosts", str(hosts), *(["--gpus", gpus] if gpus else [])]
    argv += [] if cluster else ["--no-cluster"]
    with open(state_dir / SERVE_LOG, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    (state_dir / SERVE_PID).write_text(f"{proc.pid} {proc_start(proc.pid)}\n")
    deadline = time.monotonic() + timeout
    while not (state_dir / STATE_FILE).exists():
        failed = proc.poll() is not None
        if failed or time.monotonic() > deadline:
            tail = (state_dir / SERVE_LOG).read_text(errors="replace")[-3000:]
            down(state_dir)
            why = f"exited ({proc.returncode})" if failed else f"not ready after {timeout:.0f} s"
            raise LabError(f"the onboarding lab {why}:\n{tail}")
        time.sleep(0.2)
    return read_state(state_dir) | {"started": True}


def _pids_in(directory: Path) -> set[int]:
    """Every process whose working directory is in ``directory``: what ``serve`` started there (the Redis
    and the control plane work in their scratch directories under it) - found even when ``serve`` was
    killed before it recorded them, and never a stranger that got a recorded PID again."""
    found = set()
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(cwd).startswith(f"{directory}/") and running(int(cwd.parent.name), None):
                found.add(int(cwd.parent.name))
    return found


def down(state_dir: Path, grace: float = 120) -> list[str]:
    """Stop ``serve`` (SIGTERM: it tears the lab down), then remove whatever a killed one left - by PID
    (recorded, or working in ``state_dir``), by the lab's directory (namespaces, cgroups, links), and
    ``state_dir``. Returns what is still there (nothing, unless something refused to go)."""
    state_dir = state_dir.resolve()
    state: dict[str, Any] = {}
    with contextlib.suppress(LabError):
        state = read_state(state_dir)
    serving = _serve_pid(state_dir)
    if serving and running(*serving):
        os.kill(serving[0], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while running(*serving) and time.monotonic() < deadline:
            time.sleep(0.1)
    processes = state.get("processes", [])
    pids = {p["pid"] for p in processes if running(p["pid"], p["start"])} | _pids_in(state_dir)
    kill_pids(pids | ({serving[0]} if serving and running(*serving) else set()))
    teardown_dir(state_dir / "lab")
    shutil.rmtree(state_dir, ignore_errors=True)
    names = {h["netns"] for h in state.get("hosts", [])}
    left = [f"netns {ns}" for ns in netns_names() if ns in names]
    left += [f"process {pid}" for pid in _pids_in(state_dir)]
    left += [f"{p['name']} {p['pid']}" for p in processes if running(p["pid"], p["start"])]
    left += [f"directory {state_dir}"] if state_dir.exists() else []
    return left


def main(argv: list[str] | None = None) -> int:
    """An OnboardingLab held by a process of its own (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab.onboarding", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("up", "serve", "register", "approve", "down")}
    for name, command in commands.items():
        command.add_argument("--dir", required=True, type=lambda d: Path(d).resolve())
        if name in ("up", "serve"):
            command.add_argument("--hosts", type=int, default=1)
            command.add_argument("--gpus", default=None, help='per-host GPU spec, e.g. "RTX-4090:2,none"')
            command.add_argument(
                "--no-cluster", dest="cluster", action="store_false", help="no Redis, no API"
            )
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args.dir, args.hosts, args.gpus, args.cluster)
        if args.command == "up":
            print(json.dumps(up(args.dir, args.hosts, args.gpus, args.cluster), indent=2))
        elif args.command == "register":
            OnboardingLab.load(args.dir).register_all()
        elif args.command == "approve":
            OnboardingLab.load(args.dir).approve_all()
        elif args.command == "down":
            left = down(args.dir)
            if left:
                print(f"error: still there after down: {', '.join(left)}", file=sys.stderr)
                return 1
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

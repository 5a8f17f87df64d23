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
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from testkit.agent import Agent
from testkit.factories import registration_dict
from testkit.realkube import RealControlPlane, available
from testkit.redis_server import RedisServer
from tests.lab import aptrepo
from tests.lab.lab import Lab, LabHost
from worldland.state.connection import connect

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
KEY_PREFIX = "worldland:"
# in-host paths the lab's stand-ins use (roles read them in place of sysfs and /proc)
LAB_PCI_DIR = "/opt/worldland-lab/sys/bus/pci/devices"
LAB_MODULE_VERSION = "/var/lib/worldland-lab/nvidia/module-version"
LAB_PROC_MODULES = "/var/lib/worldland-lab/proc-modules"
# the lab's one repository under the paths of the repositories it stands in for
REPOSITORIES = {
    "nvidia_driver": "nvidia/",
    "container_runtime": "debian/",
    "container_runtime_nvidia": "libnvidia-container/",
    "kubernetes_node": "kubernetes/",
}
STANDINS = Path(__file__).resolve().parent / "standins"


@dataclass
class OnboardingLab:
    hosts: int = 3
    gpus: str | list[str] | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> OnboardingLab:
        status = available()
        if not status:
            raise RuntimeError(f"no real control plane: {status.reason}")
        try:
            self.lab = self.stack.enter_context(Lab(hosts=self.hosts, gpus=self.gpus, kube=True))
            self.repo = aptrepo.lab_repository(self.lab.dir / "repo")
            for name in REPOSITORIES:  # one repository, served as the three the roles know by default
                with contextlib.suppress(FileExistsError):
                    (self.repo.root / REPOSITORIES[name].rstrip("/")).symlink_to(".")
            self.served = self.stack.enter_context(aptrepo.serve(self.repo.root, self.lab.gateway))
            self.redis = self.stack.enter_context(RedisServer(also_bind=(self.lab.gateway,)))
            self.kube = self.stack.enter_context(RealControlPlane(extra_addresses=(self.lab.gateway,)))
            self.kubeconfig = self.kube.write_kubeconfig(self.lab.dir / "admin.conf", self.lab.gateway)
            for host in self.lab.hosts:
                self.prepare(host)
            self.inventory = self.write_inventory()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

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
        host.configure(proc_modules=LAB_PROC_MODULES)
        for command in ("modprobe", "sysctl", "update-initramfs"):
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
            "WORLDLAND_REDIS_URL": self.redis.url,
            "WORLDLAND_KEY_PREFIX": KEY_PREFIX,
            "WORLDLAND_KUBECONFIG": str(self.kubeconfig),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        }

    def register_all(self) -> None:
        agent = Agent(redis.Redis.from_url(self.redis.url, decode_responses=True), _names())
        for host in self.lab.hosts:
            agent.register(self.registration(host))

    def approve_all(self) -> None:
        """The listener, with an auto policy that admits lab (private) addresses, answers them all."""
        from testkit.listener import drain, make_listener
        from worldland.domain.policy import ApprovalMode, ApprovalPolicy
        from worldland.kube import KubeClient
        from worldland.state.fleet import Fleet
        from worldland.state.keys import Keys

        client = connect(self.redis.url)
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

        return Fleet.open(connect(self.redis.url), Keys(KEY_PREFIX))

    # -- inventory -----------------------------------------------------------------------------------------

    def group_vars(self) -> dict[str, Any]:
        lab = self.lab
        key = self.repo.key_path.read_text()

        def source(role: str) -> dict[str, Any]:
            return {
                f"{role}_repo_url": self.served.url + REPOSITORIES[role],
                f"{role}_repo_suites": [self.repo.suite],
                f"{role}_repo_components": [self.repo.component],
                f"{role}_repo_key": key,
            }

        ssh = [
            "-F /dev/null",
            f"-o UserKnownHostsFile={lab.known_hosts}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            f"-o ControlPath={lab.dir}/cp/%r@%h",
        ]
        return {
            "ansible_user": "root",
            "ansible_port": 22,
            "ansible_ssh_private_key_file": str(lab.key),
            "ansible_ssh_common_args": " ".join(ssh),
            "ansible_python_interpreter": "/usr/bin/python3",
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
            "redis_url": self.redis.url,
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
        self, name: str = "onboard.yml", *args: str, inventory: Path | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        playbook = str(REPO / "playbooks" / name)
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory or self.inventory), playbook, *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
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

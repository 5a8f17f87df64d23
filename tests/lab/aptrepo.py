"""The lab's signed apt repository: REAL packages that the roles install with apt, as from a fleet's mirror.

An air-gapped fleet installs from an internal mirror given by a repository URL and its signing key; the
lab does the same with a repository built for the run and served on the lab bridge's gateway address
(the only address the hosts reach)::

    repo = lab_repository(tmp_path / "repo")             # fetch + build + sign (cached, see below)
    with serve(repo.root, lab.gateway) as served:         # http://<gateway>:<port>/
        ...  # roles get served.url, repo.suite, repo.component and the key (repo.key_path)

What the repository holds (``AptRepo.packages`` maps each name to its version):

- Debian's own ``containerd``, ``runc``, ``containernetworking-plugins`` and ``iptables`` (``apt-get
  download``, never installed here), plus the part of their dependency closure that this machine has not
  installed: the lab hosts start with this machine's dpkg status, so that is what they lack.
- ``kubelet`` and ``kubeadm`` ``1.32.13-1.1`` (upstream's version spelling), built here with ``dpkg-deb``.
  With ``../shared/kube`` (``testkit.realkube.available()``) they carry the REAL v1.32.13 binaries of
  ``../shared/kube/bin``; without it, wrappers that run the lab's stand-ins (``standins/kubeadm.py``, told
  the package's version; for the kubelet a script that only sleeps, since the stand-in kubeadm registers
  the Node itself, Ready with the host's GPUs allocatable, through the lab's admin kubeconfig).
  ``AptRepo.kube_binaries`` says which: ``"real v1.32.13 from ../shared/kube"`` or ``"stand-in"``.
  The kubelet package holds upstream's ``kubelet.service`` and kubeadm's systemd drop-in
  ``kubelet.service.d/10-kubeadm.conf`` under ``/usr/lib/systemd/system`` (upstream ships the drop-in in
  the kubeadm package; here it goes with the unit it changes). There is NO ``kubectl`` package: no
  kubectl binary exists in ``../shared/kube``, so ``kubeadm`` depends only on ``kubelet`` (upstream's also
  names ``kubectl``, ``kubernetes-cni`` and ``cri-tools``, none of which the lab has).
- ``nvidia-driver-<branch>-server`` and ``nvidia-driver-<branch>-server-open`` (``Provides:
  nvidia-driver-<branch>``; they conflict, as both ship ``nvidia-smi``), version
  ``<driver_version>-0ubuntu1``: worldland lab STAND-INS. ``/usr/bin/nvidia-smi`` runs
  ``standins/nvidia_smi.py``; the postinst writes the module version (the upstream part of the package
  version) to ``/var/lib/worldland-lab/nvidia/module-version``, which stands in for the loaded kernel
  module's ``/sys/module/nvidia/version`` (the postrm removes it on remove/purge).
- ``nvidia-container-toolkit`` ``1.17.3-1``: a STAND-IN. ``/usr/bin/nvidia-ctk`` runs
  ``standins/nvidia_ctk.py``; ``/usr/bin/nvidia-container-runtime`` execs ``runc``.

The stand-in wrappers source ``/etc/worldland-lab/standin.env`` of the host (``WORLDLAND_LAB_PYTHON``,
``WORLDLAND_LAB_HOST_CONFIG``, ``WORLDLAND_LAB_STANDINS``), which the lab writes into each host.

The repository is signed with an ed25519 key generated for each ``build_repo`` (a temporary GNUPGHOME,
its gpg-agent killed afterwards): ``dists/<suite>/InRelease`` and ``Release.gpg``, the public key as
``key.asc`` (armored; ``key.gpg`` is the same, binary). Only ``dpkg-dev`` and ``gnupg`` are needed.

Caches, outside the repository (``testkit.realkube.cache_dir()``: ``$WORLDLAND_CACHE``, else
``~/.cache/worldland``): the Debian ``.deb`` files in ``<cache>/debs/`` (fetched once; kept),
the lab-built ones in ``<cache>/lab-debs/<content hash>/`` (rebuilt when this module, the binaries or
the parameters change; builds unused for a week are pruned), both under a lock for parallel pytest
workers. ``scripts/install-system-deps.sh`` fetches the Debian ones the same way (``fetch_lab_debs``).
The signature is not cached: the key is made anew with each ``build_repo`` and expires after a day.

``serve`` answers on exactly one address (never a wildcard); ``PrivateApt`` runs apt on this machine
against one repository with its own configuration, lists and cache (what the tests use).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import fcntl
import functools
import gzip
import hashlib
import http.server
import ipaddress
import json
import os
import shlex
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit import realkube
from testkit.debian import apt_download, run_tool

DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables")
KUBE_VERSION = "1.32.13"
KUBE_PACKAGE_VERSION = f"{KUBE_VERSION}-1.1"
TOOLKIT_VERSION = "1.17.3-1"
DRIVER_VERSION = "550.127.05"
BRANCHES = ("550",)
SUITE, COMPONENT = "lab", "main"
STANDIN_ENV = "/etc/worldland-lab/standin.env"
MODULE_VERSION_FILE = "/var/lib/worldland-lab/nvidia/module-version"
MAINTAINER = "WorldLand lab <lab@worldland.invalid>"
KEY_UID = "WorldLand lab repository <lab@worldland.invalid>"
ORIGIN = "WorldLand lab"
STANDINS = Path(__file__).resolve().with_name("standins")
REAL_KUBE = f"real v{KUBE_VERSION} from ../shared/kube"
STANDIN_KUBE = "stand-in"
TIMEOUT_S = 600
DPKG_STATUS = "/var/lib/dpkg/status"
APT_LISTS = "/var/lib/apt/lists"
PRUNE_AFTER_S = 7 * 24 * 3600  # lab-built packages nothing asked for in a week are removed

KUBELET_SERVICE = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
--kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the \
KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, \
the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS \
should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS \
$KUBELET_EXTRA_ARGS
"""

KUBELET_STANDIN = f"""\
#!/bin/sh
# worldland lab stand-in for the kubelet: this lab has no real kubelet binary (no ../shared/kube).
# The stand-in kubeadm (tests/lab/standins/kubeadm.py) registers the Node itself and marks kubelet.service
# running through the systemctl stand-in, so this only has to exist and, when started, stay up.
case "$1" in
  --version) echo "Kubernetes v{KUBE_VERSION}"; exit 0 ;;
esac
exec sleep infinity
"""

RUNTIME_STANDIN = """\
#!/bin/sh
# worldland lab stand-in for nvidia-container-runtime: no GPU to inject here, so it is runc itself.
exec runc "$@"
"""


class AptRepoError(RuntimeError):
    """The repository cannot be built or served (the message says which step and why)."""


@dataclass(frozen=True)
class AptRepo:
    """A built, signed repository: ``deb [signed-by=<key>] <url> <suite> <component>``."""

    root: Path
    suite: str
    component: str
    key_path: Path
    fingerprint: str
    packages: dict[str, str]  # name -> version
    kube_binaries: str | None = None  # REAL_KUBE, STANDIN_KUBE, or None (no Kubernetes packages)
    debs: dict[str, Path] = field(default_factory=dict, compare=False)  # name -> .deb in the pool

    def source_line(self, url: str, key_path: str | Path | None = None) -> str:
        """The sources.list line; ``key_path`` is where the key lies on the host (default: here)."""
        return f"deb [signed-by={key_path or self.key_path}] {url} {self.suite} {self.component}"


# -- commands and caches ----------------------------------------------------------------------------


def _run(command: Sequence[str], what: str, **kwargs: Any) -> str:
    return run_tool(command, what, error=AptRepoError, timeout=TIMEOUT_S, **kwargs)


@functools.cache
def architecture() -> str:
    """``dpkg --print-architecture`` (the lab hosts share this machine's)."""
    return _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()


def debs_cache() -> Path:
    """``<cache>/debs``: Debian's packages, as ``apt-get download`` names them."""
    return realkube.cache_dir() / "debs"


# -- 1. Debian's packages ---------------------------------------------------------------------------


_GRAPHS: dict[tuple[tuple[str, ...], int], dict[str, list[list[str]]]] = {}


def installed_packages() -> set[str]:
    """Names of the packages installed on this machine (what a fresh lab host has too)."""
    out = _run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\\n"], "dpkg-query -W")
    names = set()
    for line in out.splitlines():
        name, _, status = line.partition(" ")
        if len(status) >= 2 and status[1] in "iUFWt":  # installed, or unpacked far enough to count
            names.add(name.split(":", 1)[0])
    return names


def _depends_graph(names: Sequence[str]) -> dict[str, list[list[str]]]:
    """``apt-cache depends --recurse`` as package -> [[alternatives of one dependency], ...].

    A virtual package stands for its providers (the indented lines under it). Remembered within a
    process while apt's package lists are unchanged."""
    try:
        lists = os.stat(APT_LISTS).st_mtime_ns
    except OSError:
        lists = 0
    key = (tuple(names), lists)
    if key not in _GRAPHS:
        _GRAPHS[key] = _read_depends_graph(names)
    return _GRAPHS[key]


def _read_depends_graph(names: Sequence[str]) -> dict[str, list[list[str]]]:
    out = _run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *names,
        ],
        "apt-cache depends",
    )
    graph: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    group: list[str] = []
    continues = False
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            name = line.strip()
            current = None if name.startswith("<") else graph.setdefault(name.split(":", 1)[0], [])
            continues = False
            continue
        if current is None:
            continue
        if line.startswith("    "):  # a provider of the virtual package just named
            group.append(line.strip().split(":", 1)[0])
            continue
        kind, _, target = line[2:].partition(":")
        if kind.strip() not in ("Depends", "PreDepends"):
            continue
        target = target.strip().strip("<>").split(":", 1)[0]
        if not continues:
            group = []
            current.append(group)
        group.append(target)
        continues = line[1] == "|"
    return graph


def dependency_closure(names: Sequence[str], installed: set[str] | None = None) -> list[str]:
    """``names`` and what they need that is not installed here, following the first alternative (or
    provider) of a dependency none of whose alternatives is installed."""
    installed = installed_packages() if installed is None else installed
    graph = _depends_graph(names)
    missing = [n for n in names if n not in graph]
    if missing:
        raise AptRepoError(f"apt-cache knows no package {', '.join(missing)} (run apt-get update?)")
    wanted: list[str] = []
    queue = list(names)
    while queue:
        name = queue.pop(0)
        if name in wanted:
            continue
        wanted.append(name)
        for alternatives in graph.get(name, []):
            if any(a in installed for a in alternatives):
                continue
            real = [a for a in alternatives if a in graph]
            if not real:
                raise AptRepoError(
                    f"{name}: no installable package for dependency {' | '.join(alternatives)}"
                )
            queue.append(real[0])
    return [n for n in wanted if n in names or n not in installed]


def _cached_deb(directory: Path, name: str) -> Path | None:
    debs = [p for p in directory.glob(f"{name}_*.deb") if p.is_file()]
    return max(debs, key=lambda p: p.stat().st_mtime_ns) if debs else None


def _apt_download(names: Sequence[str], directory: Path) -> None:
    apt_download(names, directory, error=AptRepoError)


_FETCHED: dict[tuple[Path, tuple[str, ...], int], tuple[Path, ...]] = {}


def fetch_debian_debs(names: Sequence[str] = DEBIAN_PACKAGES) -> list[Path]:
    """Debian's ``.deb`` of ``names`` and of their not-installed dependencies, from ``<cache>/debs``.

    Fetched once with ``apt-get download`` (never installed); later calls reuse the files. When apt has
    no package lists yet (a fresh image) it runs ``apt-get update`` once, as root. Within a process the
    answer is remembered while this machine's dpkg status and the files are unchanged."""
    directory = debs_cache()
    with contextlib.suppress(OSError):
        memo = (directory, tuple(names), os.stat(DPKG_STATUS).st_mtime_ns)
        seen = _FETCHED.get(memo)
        if seen is not None and all(deb.is_file() for deb in seen):
            return list(seen)
    with realkube.directory_lock(directory):
        try:
            closure = dependency_closure(names)
        except AptRepoError:
            if os.geteuid() != 0:
                raise
            _run(["apt-get", "update", "-qq"], "apt-get update")
            closure = dependency_closure(names)
        fetch = [n for n in closure if _cached_deb(directory, n) is None]
        if fetch:
            partial = Path(tempfile.mkdtemp(prefix=".partial.", dir=directory))
            try:
                _apt_download(fetch, partial)
                for deb in partial.glob("*.deb"):
                    os.replace(deb, directory / deb.name)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        found = {n: _cached_deb(directory, n) for n in closure}
    absent = [n for n, deb in found.items() if deb is None]
    if absent:
        raise AptRepoError(f"apt-get download left no .deb for {', '.join(absent)} in {directory}")
    debs = [deb for deb in found.values() if deb is not None]
    with contextlib.suppress(OSError):
        _FETCHED[(directory, tuple(names), os.stat(DPKG_STATUS).st_mtime_ns)] = tuple(debs)
    return debs


# -- 2. packages built here ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Content:
    """One file of a package: its bytes (or a file to take them from) and its mode."""

    data: bytes | Path
    mode: int = 0o644


def _text(text: str, mode: int = 0o644) -> Content:
    return Content(text.encode(), mode)


def standin_wrapper(command: str, script: str, env: Mapping[str, str] | None = None) -> str:
    """``/usr/bin/<command>`` that runs ``standins/<script>`` with the lab host's settings (and ``env``:
    what the package itself tells the stand-in, such as its version)."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    return f"""\
#!/bin/sh
# worldland lab stand-in for {command}: runs tests/lab/standins/{script} with this lab host's settings
# (WORLDLAND_LAB_PYTHON, WORLDLAND_LAB_HOST_CONFIG, WORLDLAND_LAB_STANDINS from {STANDIN_ENV}).
if [ ! -r {STANDIN_ENV} ]; then
  echo "{command}: worldland lab stand-in run outside a lab host ({STANDIN_ENV} is missing)" >&2
  exit 127
fi
set -a
. {STANDIN_ENV}
set +a
{exports}exec "$WORLDLAND_LAB_PYTHON" "$WORLDLAND_LAB_STANDINS/{script}" "$@"
"""


def build_deb(
    out_dir: Path,
    name: str,
    version: str,
    files: Mapping[str, Content],
    *,
    description: str,
    long_description: str = "",
    depends: Iterable[str] = (),
    provides: Iterable[str] = (),
    conflicts: Iterable[str] = (),
    scripts: Mapping[str, str] | None = None,
    directories: Iterable[str] = (),
    section: str = "admin",
    homepage: str = "",
    architecture_: str | None = None,
) -> Path:
    """``<name>_<version>_<arch>.deb`` in ``out_dir`` (``dpkg-deb --build --root-owner-group``).

    ``files`` maps absolute paths in the package to their content; ``scripts`` maintainer scripts
    (``postinst``, ``postrm``, ...) by name."""
    arch = architecture_ or architecture()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".build.{name}.", dir=out_dir))
    try:
        control_dir = staging / "DEBIAN"
        control_dir.mkdir(mode=0o755)
        size, sums = 0, []
        for directory in directories:
            (staging / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path, content in sorted(files.items()):
            target = staging / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.md5(usedforsecurity=False)
            if isinstance(content.data, Path):
                linked = False
                if content.data.stat().st_mode & 0o7777 == content.mode:  # never chmod the cache's file
                    with contextlib.suppress(OSError):
                        os.link(content.data, target)  # the cached binary itself, not a copy
                        linked = True
                if not linked:
                    shutil.copyfile(content.data, target)
                    target.chmod(content.mode)
                with open(target, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
            else:
                target.write_bytes(content.data)
                target.chmod(content.mode)
                digest.update(content.data)
            size += target.stat().st_size
            sums.append(f"{digest.hexdigest()}  {path.lstrip('/')}\n")
        for directory in (p for p in staging.rglob("*") if p.is_dir() and p != control_dir):
            directory.chmod(0o755)
        lines = [
            f"Package: {name}",
            f"Version: {version}",
            f"Architecture: {arch}",
            f"Maintainer: {MAINTAINER}",
            f"Installed-Size: {max(1, (size + 1023) // 1024)}",
        ]
        for key, values in (("Depends", depends), ("Provides", provides), ("Conflicts", conflicts)):
            values = list(values)
            if values:
                lines.append(f"{key}: {', '.join(values)}")
        lines += [f"Section: {section}", "Priority: optional"]
        if homepage:
            lines.append(f"Homepage: {homepage}")
        lines.append(f"Description: {description}")
        for paragraph in long_description.strip().split("\n\n") if long_description.strip() else []:
            if lines[-1] != f"Description: {description}":
                lines.append(" .")
            lines += [f" {line.strip()}" for line in paragraph.splitlines() if line.strip()]
        (control_dir / "control").write_text("\n".join(lines) + "\n")
        (control_dir / "md5sums").write_text("".join(sums))
        for script, text in (scripts or {}).items():
            (control_dir / script).write_text(text)
            (control_dir / script).chmod(0o755)
        deb = out_dir / f"{name}_{version.split(':')[-1]}_{arch}.deb"
        # gzip -1: a second per real Kubernetes binary (xz takes minutes); every dpkg and apt reads it
        _run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(staging), str(deb)],
            f"dpkg-deb --build {name}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return deb


def kube_mode() -> tuple[str, str]:
    """(``REAL_KUBE`` or ``STANDIN_KUBE``, why): real when ``testkit.realkube.available()`` says so
    (a real kubeadm needs the real control plane too) and ``../shared/kube`` has kubelet and kubeadm."""
    status = realkube.available()
    if not status:
        return STANDIN_KUBE, status.reason
    try:
        _, sums = realkube._checksums(realkube.shared_kube_dir())
    except realkube.RealKubeError as exc:
        return STANDIN_KUBE, str(exc)
    lacking = [n for n in ("kubelet", "kubeadm") if n not in sums]
    if lacking:
        return STANDIN_KUBE, f"../shared/kube/bin/SHA256SUMS lists no {', '.join(lacking)}"
    return REAL_KUBE, status.reason


def build_kube_debs(out_dir: Path, mode: str | None = None) -> tuple[list[Path], str]:
    """``kubelet`` and ``kubeadm`` ``1.32.13-1.1``: (the .debs, ``REAL_KUBE`` or ``STANDIN_KUBE``)."""
    mode = mode or kube_mode()[0]
    if mode == REAL_KUBE:
        kubelet = Content(realkube.kube_binary("kubelet"), 0o755)
        kubeadm = Content(realkube.kube_binary("kubeadm"), 0o755)
        what = f"the real v{KUBE_VERSION} binary from ../shared/kube, packaged by the worldland lab"
        label = "worldland lab build"
    else:
        kubelet = _text(KUBELET_STANDIN, 0o755)
        # the stand-in reports the package's version (the Node's kubeletVersion too)
        version = {"WORLDLAND_LAB_KUBERNETES_VERSION": f"v{KUBE_VERSION}"}
        kubeadm = _text(standin_wrapper("kubeadm", "kubeadm.py", version), 0o755)
        what = "a worldland lab stand-in (no ../shared/kube here): see tests/lab/aptrepo.py"
        label = "worldland lab stand-in"
    kubelet_deb = build_deb(
        out_dir,
        "kubelet",
        KUBE_PACKAGE_VERSION,
        {
            "/usr/bin/kubelet": kubelet,
            "/usr/lib/systemd/system/kubelet.service": _text(KUBELET_SERVICE),
            "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": _text(KUBEADM_DROPIN),
        },
        directories=("/etc/kubernetes/manifests",),
        depends=("iptables (>= 1.4.21)", "iproute2", "mount", "util-linux"),
        description=f"Node agent for Kubernetes clusters ({label})",
        long_description=f"/usr/bin/kubelet is {what}.",
        homepage="https://kubernetes.io",
    )
    kubeadm_deb = build_deb(
        out_dir,
        "kubeadm",
        KUBE_PACKAGE_VERSION,
        {"/usr/bin/kubeadm": kubeadm},
        depends=("kubelet (>= 1.19.0)",),
        description=f"Command-line utility for administering a Kubernetes cluster ({label})",
        long_description=f"/usr/bin/kubeadm is {what}.\n\nNo kubectl: the lab has no kubectl binary.",
        homepage="https://kubernetes.io",
    )
    return [kubelet_deb, kubeadm_deb], mode


def build_nvidia_debs(
    out_dir: Path, branches: Sequence[str] = BRANCHES, driver_version: str = DRIVER_VERSION
) -> list[Path]:
    """``nvidia-driver-<branch>-server`` and ``-server-open`` for each branch (stand-ins)."""
    debs = []
    module_version = driver_version.split("-", 1)[0]
    postinst = f"""\
#!/bin/sh
# worldland lab stand-in: the "kernel module" of this driver is a file holding its version, in place of
# /sys/module/nvidia/version of a loaded nvidia module.
set -e
if [ "$1" = configure ]; then
  mkdir -p {Path(MODULE_VERSION_FILE).parent}
  echo {module_version} > {MODULE_VERSION_FILE}
fi
exit 0
"""
    postrm = f"""\
#!/bin/sh
# worldland lab stand-in: the driver's "module" goes with the package.
set -e
case "$1" in
  remove|purge) rm -f {MODULE_VERSION_FILE} ;;
esac
exit 0
"""
    for branch in branches:
        for flavour, other in (("server", "server-open"), ("server-open", "server")):
            kind = "open kernel module" if flavour.endswith("open") else "proprietary kernel module"
            debs.append(
                build_deb(
                    out_dir,
                    f"nvidia-driver-{branch}-{flavour}",
                    f"{driver_version}-0ubuntu1",
                    {"/usr/bin/nvidia-smi": _text(standin_wrapper("nvidia-smi", "nvidia_smi.py"), 0o755)},
                    provides=(f"nvidia-driver-{branch}",),
                    conflicts=(f"nvidia-driver-{branch}-{other}",),
                    scripts={"postinst": postinst, "postrm": postrm},
                    section="restricted/libs",
                    description=f"NVIDIA Server Driver metapackage ({kind}) - worldland lab stand-in",
                    long_description=(
                        "worldland lab stand-in: /usr/bin/nvidia-smi runs the lab's nvidia-smi stand-in "
                        "(the host's configured GPUs); the postinst writes the module version to "
                        f"{MODULE_VERSION_FILE} in place of a loaded kernel module."
                    ),
                )
            )
    return debs


def build_toolkit_deb(out_dir: Path) -> Path:
    """``nvidia-container-toolkit`` 1.17.3-1 (stand-in)."""
    return build_deb(
        out_dir,
        "nvidia-container-toolkit",
        TOOLKIT_VERSION,
        {
            "/usr/bin/nvidia-ctk": _text(standin_wrapper("nvidia-ctk", "nvidia_ctk.py"), 0o755),
            "/usr/bin/nvidia-container-runtime": _text(RUNTIME_STANDIN, 0o755),
        },
        section="utils",
        homepage="https://github.com/NVIDIA/nvidia-container-toolkit",
        description="NVIDIA Container toolkit - worldland lab stand-in",
        long_description=(
            "worldland lab stand-in: nvidia-ctk runs the lab's nvidia-ctk stand-in (cdi generate/list, "
            "runtime configure for containerd); nvidia-container-runtime execs runc."
        ),
    )


def lab_debs(
    kube: bool = True, branches: Sequence[str] = BRANCHES, driver_version: str = DRIVER_VERSION
) -> tuple[list[Path], str | None]:
    """The packages built here, from ``<cache>/lab-debs/<content hash>/`` (built once per content):
    (the .debs, ``kube_binaries`` or None without ``kube``)."""
    mode = kube_mode()[0] if kube else None
    key: dict[str, Any] = {
        "module": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "arch": architecture(),
        "kube": mode,
        "branches": list(branches),
        "driver_version": driver_version,
    }
    if mode == REAL_KUBE:
        _, sums = realkube._checksums(realkube.shared_kube_dir())
        key["binaries"] = {n: sums[n] for n in ("kubelet", "kubeadm")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    directory = realkube.cache_dir() / "lab-debs" / digest
    manifest = directory / "built.json"
    with realkube.directory_lock(directory):
        if manifest.is_file():
            names = json.loads(manifest.read_text())["debs"]
            debs = [directory / n for n in names]
            if all(d.is_file() for d in debs):
                manifest.touch()  # in use: _prune keeps it
                return debs, mode
        for old in directory.glob("*.deb"):
            old.unlink()
        debs = []
        if mode is not None:
            debs += build_kube_debs(directory, mode)[0]
        debs += build_nvidia_debs(directory, branches, driver_version)
        debs.append(build_toolkit_deb(directory))
        manifest.write_text(json.dumps({"key": key, "debs": [d.name for d in debs]}, indent=2) + "\n")
    _prune(directory)
    return debs, mode


def _prune(keep: Path, unused_s: float = PRUNE_AFTER_S) -> None:
    """Removes the other builds in ``<cache>/lab-debs`` that nothing used for ``unused_s`` seconds (an
    older version of this module, other binaries); one that another process holds is left alone."""
    now = time.time()
    for other in keep.parent.iterdir():
        if other == keep or not other.is_dir():
            continue
        try:
            stamp = other / "built.json"
            used = stamp.stat().st_mtime if stamp.exists() else other.stat().st_mtime
            if now - used < unused_s:
                continue
            with open(other / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(other)
        except OSError:
            continue


# -- 3. the repository ---------------------------------------------------------------------------------


def _deb_fields(deb: Path) -> dict[str, str]:
    out = _run(["dpkg-deb", "--field", str(deb), "Package", "Version"], f"dpkg-deb --field {deb.name}")
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _short_tmp() -> Path:
    """A directory for GNUPGHOME whose agent socket path fits in sun_path (108 bytes)."""
    return Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())


def _sign(release: Path, root: Path) -> str:
    """Signs ``release`` (``InRelease`` and ``Release.gpg`` beside it) with a new key; its public half
    goes to ``root/key.asc`` and ``root/key.gpg``. Returns the key's fingerprint."""
    home = Path(tempfile.mkdtemp(prefix="wl-gpg.", dir=_short_tmp()))
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--no-tty", "--quiet", "--yes"]
    try:
        _run(
            [*gpg, "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "1d"],
            "gpg --quick-gen-key",
            env=env,
        )
        listing = _run([*gpg, "--with-colons", "--list-secret-keys"], "gpg --list-secret-keys", env=env)
        fingerprint = next(
            (line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")), ""
        )
        if not fingerprint:
            raise AptRepoError(f"gpg made no key in {home}")
        (root / "key.asc").write_text(
            _run([*gpg, "--armor", "--export", fingerprint], "gpg --export", env=env)
        )
        _run([*gpg, "--output", str(root / "key.gpg"), "--export", fingerprint], "gpg --export", env=env)
        sign = [*gpg, "--local-user", fingerprint, "--digest-algo", "SHA256"]
        _run(
            [*sign, "--clearsign", "--output", str(release.with_name("InRelease")), str(release)],
            "gpg --clearsign",
            env=env,
        )
        _run(
            [
                *sign,
                "--armor",
                "--detach-sign",
                "--output",
                str(release.with_name("Release.gpg")),
                str(release),
            ],
            "gpg --detach-sign",
            env=env,
        )
        return fingerprint
    finally:
        with contextlib.suppress(AptRepoError):
            _run(["gpgconf", "--kill", "all"], "gpgconf --kill all", env=env)
        shutil.rmtree(home, ignore_errors=True)


def _release(entries: Mapping[str, bytes], suite: str, component: str, arch: str) -> str:
    lines = [
        f"Origin: {ORIGIN}",
        f"Label: {ORIGIN}",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Architectures: {arch}",
        f"Components: {component}",
        "Description: WorldLand lab repository (built for this run)",
    ]
    for title, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
        lines.append(f"{title}:")
        for name, data in sorted(entries.items()):
            digest = hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()
            lines.append(f" {digest} {len(data):>16} {name}")
    return "\n".join(lines) + "\n"


def build_repo(
    debs: Iterable[Path], directory: Path, suite: str = SUITE, component: str = COMPONENT
) -> AptRepo:
    """A signed repository in ``directory`` (made anew): ``pool/``, ``dists/<suite>/{InRelease,Release,
    Release.gpg}``, ``dists/<suite>/<component>/binary-<arch>/Packages(.gz)``, ``key.asc``."""
    root = Path(directory).resolve()
    arch = architecture()
    by_name: dict[str, Path] = {}
    for deb in debs:
        fields = _deb_fields(Path(deb))
        name = fields["Package"]
        if name in by_name:
            raise AptRepoError(f"two packages named {name}: {by_name[name]} and {deb}")
        by_name[name] = Path(deb)
    for sub in ("pool", "dists"):
        shutil.rmtree(root / sub, ignore_errors=True)
    pooled: dict[str, Path] = {}
    for name, deb in by_name.items():
        prefix = name[:4] if name.startswith("lib") else name[0]
        target = root / "pool" / component / prefix / name / deb.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, target)
        pooled[name] = target
    packages_text = _run(
        ["dpkg-scanpackages", "--arch", arch, f"pool/{component}"], "dpkg-scanpackages", cwd=root
    ).encode()
    index = f"{component}/binary-{arch}"
    component_release = (
        f"Archive: {suite}\nOrigin: {ORIGIN}\nLabel: {ORIGIN}\nComponent: {component}\nArchitecture: {arch}\n"
    ).encode()
    entries = {
        f"{index}/Packages": packages_text,
        f"{index}/Packages.gz": gzip.compress(packages_text, mtime=0),
        f"{index}/Release": component_release,
    }
    dists = root / "dists" / suite
    for name, data in entries.items():
        (dists / name).parent.mkdir(parents=True, exist_ok=True)
        (dists / name).write_bytes(data)
    release = dists / "Release"
    release.write_text(_release(entries, suite, component, arch))
    fingerprint = _sign(release, root)
    versions: dict[str, str] = {}
    current = ""
    for line in packages_text.decode().splitlines():
        if line.startswith("Package:"):
            current = line.split(":", 1)[1].strip()
        elif line.startswith("Version:") and current:
            versions[current] = line.split(":", 1)[1].strip()
    missing = sorted(set(by_name) - set(versions))
    if missing:
        raise AptRepoError(f"dpkg-scanpackages left out {', '.join(missing)}")
    return AptRepo(root, suite, component, root / "key.asc", fingerprint, versions, None, pooled)


# -- 4. serving it ---------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, int(code) if str(code).isdigit() else 0))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the address up in DNS (getfqdn), which can hang without one
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


@dataclass
class Served:
    """A running repository server: ``url`` (``http://ADDR:PORT/``) and the requests it answered."""

    url: str
    address: str
    port: int
    root: Path
    _server: _Server = field(repr=False)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of each request so far."""
        with self._server.lock:
            return list(self._server.requests)


def _check_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise AptRepoError(
            f"serve: {address!r} is not an IP address (give the one address to listen on)"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise AptRepoError(f"serve: refusing {address!r}: it would listen on every interface")
    return ip


@contextlib.contextmanager
def serve(repo_root: str | Path, address: str, port: int = 0) -> Iterator[Served]:
    """Serves ``repo_root`` over HTTP on exactly ``address`` (never a wildcard) until the block ends."""
    ip = _check_address(address)
    root = Path(repo_root).resolve()
    if not (root / "dists").is_dir():
        raise AptRepoError(f"serve: {root} is not a repository (no dists/)")
    handler = functools.partial(_Handler, directory=str(root))
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        server = _Server((str(ip), port), handler, family)
    except OSError as exc:
        raise AptRepoError(f"serve: cannot listen on {ip} port {port}: {exc.strerror or exc}") from None
    bound = server.server_address[1]
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Served(f"http://{host}:{bound}/", str(ip), int(bound), root, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- 5. all of it ----------------------------------------------------------------------------------------

_BUILT: dict[tuple[str, str], tuple[str, AptRepo]] = {}


def lab_repository(
    directory: str | Path,
    kube: bool = True,
    branches: Sequence[str] = BRANCHES,
    driver_version: str = DRIVER_VERSION,
) -> AptRepo:
    """Debian's packages + the lab-built ones, as a signed repository in ``directory``.

    Within one process, asking again for the same content in the same directory returns the repository
    already there (when its InRelease is unchanged) instead of signing it anew."""
    debs = fetch_debian_debs()
    built, mode = lab_debs(kube, branches, driver_version)
    content = hashlib.sha256()
    for deb in sorted(debs + built, key=lambda p: p.name):
        st = deb.stat()
        content.update(f"{deb.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    key = (str(Path(directory).resolve()), content.hexdigest())
    seen = _BUILT.get(key)
    if seen is not None:
        inrelease = seen[1].root / "dists" / seen[1].suite / "InRelease"
        with contextlib.suppress(OSError):
            if hashlib.sha256(inrelease.read_bytes()).hexdigest() == seen[0]:
                return seen[1]
    repo = dataclasses.replace(build_repo(debs + built, Path(directory)), kube_binaries=mode)
    inrelease = repo.root / "dists" / repo.suite / "InRelease"
    _BUILT[key] = (hashlib.sha256(inrelease.read_bytes()).hexdigest(), repo)
    return repo


# -- a private apt, for checks from this machine ---------------------------------------------------------


@dataclass
class PrivateApt:
    """apt with its own configuration, lists and cache under ``directory``, reading only the given
    source; this machine's dpkg status is read (simulations), never written, and /etc/apt is not read."""

    directory: Path
    source_line: str

    def __post_init__(self) -> None:
        d = self.directory = Path(self.directory).resolve()
        for sub in (
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/trusted.gpg.d",
            "etc/preferences.d",
            "lists/partial",
            "cache/archives/partial",
            "log",
        ):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etc/sources.list").write_text(self.source_line + "\n")
        settings = {
            "Dir::Etc::main": "/dev/null",
            "Dir::Etc::parts": d / "etc/apt.conf.d",
            "Dir::Etc::sourcelist": d / "etc/sources.list",
            "Dir::Etc::sourceparts": d / "etc/sources.list.d",
            "Dir::Etc::trusted": d / "etc/trusted.gpg",
            "Dir::Etc::trustedparts": d / "etc/trusted.gpg.d",
            "Dir::Etc::preferences": d / "etc/preferences",
            "Dir::Etc::preferencesparts": d / "etc/preferences.d",
            "Dir::State::Lists": d / "lists",
            "Dir::State::extended_states": d / "extended_states",
            "Dir::Cache": d / "cache",
            "Dir::Log": d / "log",
            "Debug::NoLocking": "1",
            "Acquire::Languages": "none",
            "Acquire::Retries": "0",
            "Acquire::http::Timeout": "20",
            "APT::Get::List-Cleanup": "0",
        }
        if os.geteuid() == 0:
            settings["APT::Sandbox::User"] = "root"
        (d / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in settings.items()))

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        return {**env, "APT_CONFIG": str(self.directory / "apt.conf"), "LC_ALL": "C"}

    def run(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``apt-get``/``apt-cache`` ARGS under this configuration."""
        done = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AptRepoError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        return done

"""``tests/lab/aptrepo.py``: the lab's signed apt repository, checked with apt itself.

The repository is built once for the module (Debian's debs and the lab-built ones come from the cache
outside the repository) and served on 127.0.0.1; apt runs with a private configuration (its own
sources.list, lists, cache and keys; ``Debug::NoLocking``), so nothing of this machine's apt state is
read or written except its dpkg status, which simulations read. ``tests/lab/standins/nvidia_ctk.py`` is
checked here too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit import realkube
from tests.lab import aptrepo
from tests.lab.aptrepo import AptRepo, AptRepoError, PrivateApt, Served
from tests.lab.gpus import HostGpus

LAB_PACKAGES = {
    "kubelet": "1.32.13-1.1",
    "kubeadm": "1.32.13-1.1",
    "nvidia-driver-550-server": "550.127.05-0ubuntu1",
    "nvidia-driver-550-server-open": "550.127.05-0ubuntu1",
    "nvidia-container-toolkit": "1.17.3-1",
}
WANTED = (
    *aptrepo.DEBIAN_PACKAGES,
    "kubelet",
    "kubeadm",
    "nvidia-driver-550-server",
    "nvidia-container-toolkit",
)
NVIDIA_CTK = aptrepo.STANDINS / "nvidia_ctk.py"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> AptRepo:
    return aptrepo.lab_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def served(repo: AptRepo) -> Iterator[Served]:
    with aptrepo.serve(repo.root, "127.0.0.1") as served:
        yield served


@pytest.fixture(scope="module")
def apt(repo: AptRepo, served: Served, tmp_path_factory: pytest.TempPathFactory) -> PrivateApt:
    """A private apt whose lists were updated from the served repository."""
    apt = PrivateApt(tmp_path_factory.mktemp("apt"), repo.source_line(served.url))
    done = apt.run("apt-get", "update")
    assert done.returncode == 0, done.stderr
    return apt


def deb_fields(deb: Path, *names: str) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-deb", "--field", str(deb), *names], capture_output=True, text=True, check=True
    ).stdout
    if len(names) == 1:
        return {names[0]: out.strip()}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


_UNPACKED: dict[Path, Path] = {}


def deb_file(deb: Path, path: str) -> bytes:
    """One file of a package's data (``dpkg-deb -x``, once per package, beside it)."""
    if deb not in _UNPACKED:
        target = Path(tempfile.mkdtemp(prefix=f".x-{deb.stem}.", dir=deb.parent))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        _UNPACKED[deb] = target
    file = _UNPACKED[deb] / path.lstrip("/")
    assert file.is_file() and not file.is_symlink(), f"{path} is not a regular file in {deb.name}"
    return file.read_bytes()


def control_file(deb: Path, name: str, tmp_path: Path) -> str:
    target = tmp_path / f"control-{deb.stem}"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(target)], check=True)
    return (target / name).read_text()


# -- apt against the repository -------------------------------------------------------------------------


def test_apt_get_update_succeeds_with_the_key(apt: PrivateApt, served: Served) -> None:
    done = apt.run("apt-get", "update")
    assert done.returncode == 0, done.stderr
    assert "W:" not in done.stderr and "E:" not in done.stderr, done.stderr
    assert ("GET", "/dists/lab/InRelease", 200) in served.requests
    lists = [p.name for p in (apt.directory / "lists").iterdir()]
    assert any(name.endswith("_dists_lab_main_binary-amd64_Packages") for name in lists), lists


def test_a_tampered_inrelease_fails_with_a_signature_error(repo: AptRepo, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(repo.root / "dists", copy / "dists")
    for name in ("InRelease", "Release"):  # the same change in both, so no fallback can pass either
        path = copy / "dists" / repo.suite / name
        text = path.read_text()
        assert "Label: WorldLand lab\n" in text
        path.write_text(text.replace("Label: WorldLand lab\n", "Label: WorldLand lax\n"))
    with aptrepo.serve(copy, "127.0.0.1") as served:
        done = PrivateApt(tmp_path / "apt", repo.source_line(served.url)).run("apt-get", "update")
    assert done.returncode != 0
    assert "BADSIG" in done.stdout + done.stderr, done.stdout + done.stderr


def test_another_key_fails_with_a_signature_error(repo: AptRepo, served: Served, tmp_path: Path) -> None:
    other = aptrepo.build_repo([repo.debs["nvidia-container-toolkit"]], tmp_path / "other")
    assert other.fingerprint != repo.fingerprint
    done = PrivateApt(tmp_path / "apt", repo.source_line(served.url, other.key_path)).run("apt-get", "update")
    assert done.returncode != 0
    assert "NO_PUBKEY" in done.stdout + done.stderr, done.stdout + done.stderr


def expected_versions(repo: AptRepo) -> dict[str, str]:
    """Debian's packages at the versions their .debs say; the lab's at upstream's spelling."""
    debian = {n: deb_fields(repo.debs[n], "Version")["Version"] for n in aptrepo.DEBIAN_PACKAGES}
    return debian | LAB_PACKAGES


@pytest.mark.parametrize("name", [*aptrepo.DEBIAN_PACKAGES, *LAB_PACKAGES])
def test_apt_cache_offers_each_package_at_its_version(
    apt: PrivateApt, served: Served, repo: AptRepo, name: str
) -> None:
    version = expected_versions(repo)[name]
    policy = apt.run("apt-cache", "policy", name).stdout
    assert f"Candidate: {version}\n" in policy, policy
    assert f"{served.url.rstrip('/')} lab/main amd64 Packages" in policy, policy
    show = apt.run("apt-cache", "show", f"{name}={version}")
    assert show.returncode == 0, show.stderr
    assert f"Package: {name}\n" in show.stdout and f"Version: {version}\n" in show.stdout
    assert repo.packages[name] == version


def test_the_packages_install_from_the_repository_alone(apt: PrivateApt, repo: AptRepo) -> None:
    """A host that starts with this machine's dpkg status can install all of it from this repository."""
    done = apt.run("apt-get", "-s", "-o", "APT::Install-Recommends=0", "install", *WANTED)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("Inst ")}
    assert set(WANTED) <= installs, installs
    # everything it pulls in is in the repository, and nothing in it is installed here already
    assert installs <= set(repo.packages), installs - set(repo.packages)
    extra = set(repo.packages) - set(WANTED) - {"nvidia-driver-550-server-open"}
    assert not extra & aptrepo.installed_packages()


def test_the_two_driver_flavours_conflict(apt: PrivateApt) -> None:
    done = apt.run("apt-get", "-s", "install", "nvidia-driver-550-server", "nvidia-driver-550-server-open")
    assert done.returncode != 0
    assert "Conflicts" in done.stdout + done.stderr or "conflict" in done.stdout + done.stderr


def test_debian_debs_come_from_the_cache_with_the_closure_not_installed_here(repo: AptRepo) -> None:
    cache = aptrepo.debs_cache()
    assert cache == realkube.cache_dir() / "debs"
    for name in aptrepo.DEBIAN_PACKAGES:
        assert (cache / repo.debs[name].name).is_file(), name
    closure = aptrepo.dependency_closure(aptrepo.DEBIAN_PACKAGES, installed=set())
    assert {"iptables", "libxtables12", "libc6", "libseccomp2"} <= set(closure)
    fewer = aptrepo.dependency_closure(aptrepo.DEBIAN_PACKAGES, installed={"libc6", "iptables"})
    assert "libc6" not in fewer and "libxtables12" in fewer
    assert "iptables" in fewer  # asked for, so offered even where it is installed
    here = aptrepo.dependency_closure(aptrepo.DEBIAN_PACKAGES)
    assert sorted(here) == sorted(n for n in repo.debs if n not in LAB_PACKAGES)


# -- the packages ----------------------------------------------------------------------------------------


def test_kubelet_package_holds_the_unit_and_the_kubeadm_drop_in(repo: AptRepo) -> None:
    deb = repo.debs["kubelet"]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in (
        "./usr/bin/kubelet",
        "./usr/lib/systemd/system/kubelet.service",
        "./usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
    ):
        assert path in listing.split(), listing
    unit = deb_file(deb, "/usr/lib/systemd/system/kubelet.service").decode().splitlines()
    for line in (
        "ExecStart=/usr/bin/kubelet",
        "Restart=always",
        "RestartSec=10",
        "Wants=network-online.target",
    ):
        assert line in unit
    dropin = deb_file(deb, "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf").decode().splitlines()
    for line in (
        'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf'
        ' --kubeconfig=/etc/kubernetes/kubelet.conf"',
        'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"',
        "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env",
        "EnvironmentFile=-/etc/default/kubelet",
        "ExecStart=",
        "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS"
        " $KUBELET_EXTRA_ARGS",
    ):
        assert line in dropin
    assert dropin.index("ExecStart=") < dropin.index(next(x for x in dropin if x.startswith("ExecStart=/")))


@pytest.mark.parametrize("name", ["kubelet", "kubeadm"])
def test_kube_packages_carry_the_real_binaries_when_available(repo: AptRepo, name: str) -> None:
    if repo.kube_binaries != aptrepo.REAL_KUBE:
        pytest.skip(f"kube_binaries is {repo.kube_binaries!r}: {aptrepo.kube_mode()[1]}")
    packaged = hashlib.sha256(deb_file(repo.debs[name], f"/usr/bin/{name}")).hexdigest()
    cached = hashlib.sha256(realkube.kube_binary(name).read_bytes()).hexdigest()
    _, sums = realkube._checksums(realkube.shared_kube_dir())
    assert packaged == cached == sums[name]
    assert (
        "real v1.32.13 binary from ../shared/kube"
        in deb_fields(repo.debs[name], "Description")["Description"]
    )


def test_kube_stand_in_packages_run_the_stand_ins(tmp_path: Path) -> None:
    debs, mode = aptrepo.build_kube_debs(tmp_path, aptrepo.STANDIN_KUBE)
    assert mode == "stand-in"
    kubelet, kubeadm = debs
    assert deb_fields(kubeadm, "Version")["Version"] == "1.32.13-1.1"
    wrapper = deb_file(kubeadm, "/usr/bin/kubeadm").decode()
    assert f". {aptrepo.STANDIN_ENV}" in wrapper
    assert 'exec "$WORLDLAND_LAB_PYTHON" "$WORLDLAND_LAB_STANDINS/kubeadm.py" "$@"' in wrapper
    script = deb_file(kubelet, "/usr/bin/kubelet").decode()
    assert script.startswith("#!/bin/sh\n") and "exec sleep infinity" in script
    assert "stand-in" in deb_fields(kubelet, "Description")["Description"]
    # no kubectl: kubeadm depends on the kubelet only
    assert deb_fields(kubeadm, "Depends")["Depends"] == "kubelet (>= 1.19.0)"


def host_config(tmp_path: Path, spec: str = "RTX-4090:2+L4:1") -> Path:
    gpus = HostGpus.parse(spec)
    cfg: dict[str, Any] = {
        "name": "lab-host-1",
        "gpus": gpus.records("lab-host-1"),
        "driver": gpus.driver,
        "driver_version": "550.127.05",
        "cuda_version": "12.4",
        "standin_log": str(tmp_path / "standin.log"),
        "units_state": str(tmp_path / "units.json"),
    }
    path = tmp_path / "host.json"
    path.write_text(json.dumps(cfg))
    return path


def run_wrapper(
    deb: Path, path: str, tmp_path: Path, config: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The package's wrapper, with the lab host's standin.env moved to a file here."""
    env_file = tmp_path / "standin.env"
    env_file.write_text(
        f"WORLDLAND_LAB_HOST_CONFIG={config}\nWORLDLAND_LAB_PYTHON={sys.executable}\n"
        f"WORLDLAND_LAB_STANDINS={aptrepo.STANDINS}\n"
    )
    text = deb_file(deb, path).decode()
    assert aptrepo.STANDIN_ENV in text
    script = tmp_path / Path(path).name
    script.write_text(text.replace(aptrepo.STANDIN_ENV, str(env_file)))
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=30, check=False)


def test_driver_package_runs_the_nvidia_smi_stand_in(repo: AptRepo, tmp_path: Path) -> None:
    deb = repo.debs["nvidia-driver-550-server"]
    fields = deb_fields(deb, "Provides", "Conflicts", "Description", "Architecture")
    assert fields["Provides"] == "nvidia-driver-550"
    assert fields["Conflicts"] == "nvidia-driver-550-server-open"
    assert "worldland lab stand-in" in fields["Description"]
    assert fields["Architecture"] == aptrepo.architecture()
    config = host_config(tmp_path)
    done = run_wrapper(deb, "/usr/bin/nvidia-smi", tmp_path, config, "-L")
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["GPU 0", "GPU 1", "GPU 2"]


def test_driver_postinst_writes_the_module_version(repo: AptRepo, tmp_path: Path) -> None:
    deb = repo.debs["nvidia-driver-550-server-open"]
    target = tmp_path / "nvidia" / "module-version"
    for name, args in (("postinst", ["configure", ""]), ("postrm", ["remove"])):
        text = control_file(deb, name, tmp_path).replace(aptrepo.MODULE_VERSION_FILE, str(target))
        text = text.replace(str(Path(aptrepo.MODULE_VERSION_FILE).parent), str(target.parent))
        script = tmp_path / name
        script.write_text(text)
        subprocess.run(["sh", str(script), *args], check=True)
        if name == "postinst":
            assert target.read_text() == "550.127.05\n"
    assert not target.exists()  # postrm remove


def test_other_branches_and_driver_versions(tmp_path: Path) -> None:
    debs = aptrepo.build_nvidia_debs(tmp_path, ("535", "570"), "535.183.01")
    got = {deb_fields(d, "Package")["Package"]: deb_fields(d, "Version")["Version"] for d in debs}
    assert got == {
        "nvidia-driver-535-server": "535.183.01-0ubuntu1",
        "nvidia-driver-535-server-open": "535.183.01-0ubuntu1",
        "nvidia-driver-570-server": "535.183.01-0ubuntu1",
        "nvidia-driver-570-server-open": "535.183.01-0ubuntu1",
    }


def test_toolkit_package_holds_the_stand_ins(repo: AptRepo, tmp_path: Path) -> None:
    deb = repo.debs["nvidia-container-toolkit"]
    assert "worldland lab stand-in" in deb_fields(deb, "Description")["Description"]
    done = run_wrapper(deb, "/usr/bin/nvidia-ctk", tmp_path, host_config(tmp_path), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "NVIDIA Container Toolkit CLI version 1.17.3"
    runtime = deb_file(deb, "/usr/bin/nvidia-container-runtime").decode()
    assert runtime.startswith("#!/bin/sh\n") and 'exec runc "$@"' in runtime


# -- the nvidia-ctk stand-in -----------------------------------------------------------------------------


def ctk(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"} | ({"WORLDLAND_LAB_HOST_CONFIG": str(config)} if config else {})
    return subprocess.run(
        [sys.executable, str(NVIDIA_CTK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_cdi_generate_writes_one_device_per_gpu(tmp_path: Path) -> None:
    config = host_config(tmp_path, "RTX-4090:2+L4:1")
    spec_dir = tmp_path / "cdi"
    done = ctk(config, "cdi", "generate", f"--output={spec_dir / 'nvidia.yaml'}")
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load((spec_dir / "nvidia.yaml").read_text())
    assert spec["cdiVersion"] == "0.5.0" and spec["kind"] == "nvidia.com/gpu"
    assert [d["name"] for d in spec["devices"]] == ["0", "1", "2", "all"]
    assert [d["containerEdits"]["deviceNodes"] for d in spec["devices"][:3]] == [
        [{"path": f"/dev/nvidia{i}"}] for i in range(3)
    ]
    assert len(spec["devices"][3]["containerEdits"]["deviceNodes"]) == 3
    listed = ctk(None, "cdi", "list", f"--spec-dir={spec_dir}")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [
        "nvidia.com/gpu=0",
        "nvidia.com/gpu=1",
        "nvidia.com/gpu=2",
        "nvidia.com/gpu=all",
    ]
    log = [json.loads(line) for line in (tmp_path / "standin.log").read_text().splitlines()]
    assert log[-1]["command"] == "nvidia-ctk"


def test_cdi_generate_follows_the_host_config(tmp_path: Path) -> None:
    one = ctk(host_config(tmp_path, "A100:1"), "cdi", "generate", "--format=json")
    assert one.returncode == 0, one.stderr
    assert [d["name"] for d in json.loads(one.stdout)["devices"]] == ["0", "all"]
    nodriver = ctk(host_config(tmp_path, "A100:1/nodriver"), "cdi", "generate", "--output=/dev/null")
    assert nodriver.returncode == 1 and "NVML" in nodriver.stderr


CONTAINERD_TOML = """\
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
"""


@pytest.mark.parametrize("start", ["ours", "absent"])
def test_runtime_configure_is_idempotent(tmp_path: Path, start: str) -> None:
    config = tmp_path / "etc" / "containerd" / "config.toml"
    if start == "ours":
        config.parent.mkdir(parents=True)
        config.write_text(CONTAINERD_TOML)
    args = ("runtime", "configure", "--runtime=containerd", f"--config={config}", "--set-as-default")
    first = ctk(None, *args)
    assert first.returncode == 0, first.stderr
    once = config.read_text()
    second = ctk(None, *args)
    assert second.returncode == 0, second.stderr
    assert config.read_text() == once
    cri = tomllib.loads(once)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    nvidia = cri["runtimes"]["nvidia"]
    assert nvidia["runtime_type"] == "io.containerd.runc.v2"
    assert nvidia["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert cri["default_runtime_name"] == "nvidia"
    if start == "ours":
        assert nvidia["options"]["SystemdCgroup"] is False
        assert cri["snapshotter"] == "overlayfs" and once.startswith(CONTAINERD_TOML.split("\n\n")[0])
    without_default = tmp_path / "plain.toml"
    without_default.write_text(CONTAINERD_TOML)
    done = ctk(None, "runtime", "configure", "--runtime=containerd", f"--config={without_default}")
    assert done.returncode == 0, done.stderr
    assert (
        "default_runtime_name"
        not in tomllib.loads(without_default.read_text())["plugins"]["io.containerd.grpc.v1.cri"][
            "containerd"
        ]
    )


@pytest.mark.parametrize(
    "args",
    [
        ("runtime", "configure", "--runtime=docker"),
        ("runtime", "configure", "--runtime=containerd", "--bogus"),
        ("cdi", "transform"),
        ("info",),
        (),
    ],
)
def test_nvidia_ctk_refuses_what_it_does_not_implement(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = tmp_path / "c.toml"
    done = ctk(host_config(tmp_path), *args, *([f"--config={config}"] if args[:1] == ("runtime",) else []))
    assert done.returncode != 0
    assert done.stderr.strip()
    assert not config.exists()


# -- serving ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "localhost"])  # noqa: S104 (refused)
def test_serve_refuses_anything_but_one_address(repo: AptRepo, address: str) -> None:
    with pytest.raises(AptRepoError), aptrepo.serve(repo.root, address):
        pass


def test_serve_listens_on_that_address_and_stops_at_exit(repo: AptRepo) -> None:
    with aptrepo.serve(repo.root, "127.0.0.1") as served:
        assert served.url == f"http://127.0.0.1:{served.port}/"
        with socket.create_connection(("127.0.0.1", served.port), timeout=5):
            pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", served.port), timeout=5):
        pass


def test_the_key_is_the_one_that_signed(repo: AptRepo, tmp_path: Path) -> None:
    key = repo.key_path.read_text()
    assert key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    home = Path(tempfile.mkdtemp(prefix="wl-gpg.", dir="/tmp"))  # a short path: gpg's socket names
    try:
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--show-keys", str(repo.key_path)],
            capture_output=True,
            text=True,
            check=True,
            env={"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"},
        ).stdout
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={"GNUPGHOME": str(home)}, check=False)
        shutil.rmtree(home, ignore_errors=True)
    assert f"fpr:::::::::{repo.fingerprint}:" in listing
    assert "WorldLand lab repository <lab@worldland.invalid>" in listing
    release = (repo.root / "dists" / repo.suite / "Release").read_text()
    for field in (
        "Origin:",
        "Label:",
        "Suite: lab",
        "Codename: lab",
        "Date:",
        "Architectures:",
        "Components: main",
    ):
        assert f"\n{field}" in "\n" + release
    assert "\nMD5Sum:\n" in release and "\nSHA256:\n" in release

"""A real Kubernetes control plane for tests and the demo: etcd, kube-apiserver and kube-controller-manager.

The Kubernetes binaries (v1.32.13) come from ``../shared/kube/bin`` beside the repository
(``$WORLDLAND_SHARED_KUBE`` overrides the directory): gunzipped once into
``~/.cache/worldland/kube/<sha256 of bin/SHA256SUMS>/`` and checked against ``bin/SHA256SUMS``. etcd is
Debian's ``etcd-server`` package, fetched once with ``apt-get download`` into ``~/.cache/worldland/etcd/``
and unpacked there with ``dpkg -x`` (never installed, no service); ``scripts/install-system-deps.sh``
fetches it the same way. ``$WORLDLAND_CACHE`` moves the cache.

    with RealControlPlane(extra_addresses=("10.213.250.1",)) as plane:
        plane.kubeconfig      # admin kubeconfig (client certificate in system:masters)
        plane.server_url      # https://127.0.0.1:<port>
        plane.ca_pem

Everything listens on 127.0.0.1 at free ports; ``extra_addresses`` (a lab bridge's gateway address) are
served on the apiserver's port by a relay process, and are refused when they are a wildcard, not an
address of this machine, or on the interface of the default route. The PKI is generated in Python
(``realkube_pki``); the objects ``kubeadm init`` would leave for ``kubeadm join`` are created through the
official client (``realkube_objects``). ``stop()`` (also ``__exit__``, and any failure while starting)
ends every process by its PID, SIGTERM then SIGKILL, and removes the scratch directory.

``available()`` says whether the binaries and etcd can be had, and why not. Where they cannot (a fresh
machine without ``../shared/kube``), tests fall back to the Kubernetes API test server
(``testkit/kube_server``) and say so. ``python -m testkit.realkube`` runs one until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import http.client
import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from testkit import realkube_objects, realkube_pki
from testkit.debian import run_tool, unpack_package

REPO = Path(__file__).resolve().parent.parent
SHARED_ENV = "WORLDLAND_SHARED_KUBE"
CACHE_ENV = "WORLDLAND_CACHE"
DISABLE_ENV = "WORLDLAND_REALKUBE"  # "0"/"off": act as if ../shared/kube were absent
ETCD_PACKAGE = "etcd-server"
CONTROL_PLANE_BINARIES = ("kube-apiserver", "kube-controller-manager")
CONTROLLERS = "bootstrapsigner,tokencleaner,csrsigning,csrapproving,csrcleaner,nodelifecycle"
# The controller-manager creates one service account per controller it starts
# (--use-service-account-credentials); these two mean the bootstrap-token controllers run.
CONTROLLER_ACCOUNTS = ("bootstrap-signer", "token-cleaner")
STOP_GRACE_S = 10.0


class RealKubeError(RuntimeError):
    """The control plane cannot be had or did not come up (the message says which part and why)."""


# -- where things are ---------------------------------------------------------------------------------


def shared_kube_dir() -> Path:
    """``$WORLDLAND_SHARED_KUBE``, else ``<repo>/../shared/kube``."""
    override = os.environ.get(SHARED_ENV)
    return Path(override).expanduser().resolve() if override else REPO.parent / "shared" / "kube"


def shared_label(shared: Path | None = None) -> str:
    """How run reports name the directory: ``../shared/kube`` when it is the usual one."""
    shared = shared or shared_kube_dir()
    with contextlib.suppress(OSError):
        if shared.resolve() == (REPO.parent / "shared" / "kube").resolve():
            return "../shared/kube"
    return str(shared)


def cache_dir() -> Path:
    """``$WORLDLAND_CACHE``, else ``$XDG_CACHE_HOME/worldland`` (``~/.cache/worldland``): outside the repo."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "worldland"


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (pytest-xdist workers and parallel runs share the cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _checksums(shared: Path) -> tuple[bytes, dict[str, str]]:
    path = shared / "bin" / "SHA256SUMS"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RealKubeError(f"{path}: {exc.strerror or exc}") from None
    sums = {}
    for line in text.decode().splitlines():
        digest, _, name = line.strip().partition(" ")
        if digest:
            sums[name.strip().lstrip("*")] = digest.lower()
    return text, sums


def kube_binary(name: str, shared: Path | None = None) -> Path:
    """``bin/<name>.gz`` gunzipped into the cache (once), its sha256 checked against ``bin/SHA256SUMS``."""
    shared = shared or shared_kube_dir()
    text, sums = _checksums(shared)
    if name not in sums:
        raise RealKubeError(f"{name} is not listed in {shared / 'bin' / 'SHA256SUMS'}")
    directory = cache_dir() / "kube" / hashlib.sha256(text).hexdigest()
    target, stamp = directory / name, directory / f".{name}.verified"

    def verified() -> bool:
        try:
            st = target.stat()
            return stamp.read_text() == f"{sums[name]} {st.st_size} {st.st_mtime_ns}" and os.access(
                target, os.X_OK
            )
        except OSError:
            return False

    if verified():
        return target
    with directory_lock(directory):
        if verified():
            return target
        source = shared / "bin" / f"{name}.gz"
        partial = directory / f".{name}.{os.getpid()}.partial"
        digest = hashlib.sha256()
        try:
            with gzip.open(source, "rb") as src, open(partial, "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sums[name]:
                raise RealKubeError(
                    f"{source}: gunzipped sha256 {digest.hexdigest()} is not {sums[name]} of bin/SHA256SUMS"
                )
            partial.chmod(0o755)
            os.replace(partial, target)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise RealKubeError(f"cannot unpack {source}: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        st = target.stat()
        stamp.write_text(f"{sums[name]} {st.st_size} {st.st_mtime_ns}")
    return target


def etcd_binary(fetch: bool = True) -> Path:
    """``usr/bin/etcd`` of Debian's ``etcd-server`` under ``<cache>/etcd/root`` (fetched when missing).

    The same layout as ``scripts/install-system-deps.sh`` makes: the ``.deb`` in ``<cache>/etcd/``, its
    contents under ``<cache>/etcd/root/`` (``dpkg -x``: no maintainer scripts, no service)."""
    directory = cache_dir() / "etcd"
    binary = directory / "root" / "usr" / "bin" / "etcd"
    if os.access(binary, os.X_OK):
        return binary
    if not fetch:
        raise RealKubeError(f"etcd is not unpacked at {binary} (make install fetches it)")
    with directory_lock(directory):
        if os.access(binary, os.X_OK):
            return binary
        unpack_package(ETCD_PACKAGE, directory, error=RealKubeError)
    if not os.access(binary, os.X_OK):
        raise RealKubeError(f"{ETCD_PACKAGE} has no usr/bin/etcd")
    return binary


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    return run_tool(command, what, error=RealKubeError, cwd=cwd)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def available(fetch: bool = True) -> Availability:
    """Whether ``../shared/kube/bin`` and etcd can be had here; ``reason`` says why not (or what was found).

    With ``fetch`` (the default), etcd is fetched now when it is not in the cache yet."""
    setting = os.environ.get(DISABLE_ENV, "").strip().lower()
    if setting in ("0", "no", "off", "false"):
        return Availability(False, f"${DISABLE_ENV}={setting}")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "amd64"):
        return Availability(
            False, f"the binaries in ../shared/kube are linux/amd64, not {platform.machine()}"
        )
    shared = shared_kube_dir()
    bin_dir = shared / "bin"
    if not bin_dir.is_dir():
        return Availability(False, f"{bin_dir} is absent")
    try:
        _, sums = _checksums(shared)
        for name in CONTROL_PLANE_BINARIES:
            if name not in sums or not (bin_dir / f"{name}.gz").is_file():
                return Availability(False, f"{bin_dir} has no {name}.gz listed in SHA256SUMS")
        etcd = etcd_binary(fetch=fetch)
    except RealKubeError as exc:
        return Availability(False, str(exc))
    return Availability(True, f"{shared_label(shared)}/bin and {etcd}")


# -- addresses ----------------------------------------------------------------------------------------------


def _ip_json(*args: str) -> list[dict[str, Any]]:
    tool = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None
    )
    if tool is None:
        raise ValueError("no `ip` command to check the interface of an extra address")
    done = subprocess.run([tool, "-j", *args], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise ValueError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout or "[]")  # type: ignore[no-any-return]


def check_extra_address(address: str) -> str:
    """``address`` if the apiserver may also be reached there, else ``ValueError`` saying why.

    Loopback addresses are fine; any other must be a private address of this machine on an interface
    that does not carry a default route (a lab bridge, not an outside interface). Never a wildcard."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"extra address {address!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"refusing to listen on {ip}: every interface, outside ones included")
    if ip.is_loopback:
        return str(ip)
    if not ip.is_private:
        raise ValueError(f"refusing to listen on {ip}: not a private address")
    owner = {
        info.get("local"): link.get("ifname")
        for link in _ip_json("addr", "show")
        for info in link.get("addr_info", [])
    }
    if str(ip) not in owner:
        raise ValueError(f"{ip} is not an address of this machine (create the lab bridge first)")
    outside = {
        route.get("dev") for flag in ("-4", "-6") for route in _ip_json(flag, "route", "show", "default")
    }
    if owner[str(ip)] in outside:
        raise ValueError(f"refusing to listen on {ip}: {owner[str(ip)]} carries the default route")
    return str(ip)


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def _free_ports(count: int, also_free_on: tuple[str, ...] = ()) -> list[int]:
    """``count`` distinct free 127.0.0.1 ports; the first is also free on ``also_free_on``."""
    held: list[socket.socket] = []
    tries = 0
    try:
        while len(held) < count:
            tries += 1
            if tries > 100:
                raise RealKubeError(f"no port free on 127.0.0.1 and {', '.join(also_free_on)}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            if len(held) == 1:
                port = sock.getsockname()[1]
                try:
                    for address in also_free_on:
                        family = socket.AF_INET6 if ":" in address else socket.AF_INET
                        with socket.socket(family, socket.SOCK_STREAM) as probe:
                            probe.bind((address, port))
                except OSError:
                    held.pop().close()
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


# -- the control plane ------------------------------------------------------------------------------------

SCRATCH_PREFIX = "worldland-realkube-"


def _sweep_scratch_dirs() -> None:
    """Removes scratch directories whose owner died without ``stop()`` (killed; its processes died with
    it through the parent-death signal)."""
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            owner = int((path / "owner.pid").read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # being created, or not ours to judge


class _Exited(RealKubeError):
    """A process ended while it was being waited for (a port taken since it was chosen, most often)."""


def terminate(processes: Mapping[str, subprocess.Popen[bytes]], grace: float = STOP_GRACE_S) -> None:
    """In order, each by its PID: SIGTERM, SIGKILL if it is still there after ``grace`` seconds; reaped.

    One at a time: kube-apiserver shuts down in about a second while etcd is still up, but waits
    much longer for an etcd that has gone first."""
    for process in processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)


def _cleanup(
    processes: dict[str, subprocess.Popen[bytes]], logs: list[IO[bytes]], workdir: list[Path]
) -> None:
    """What ``stop()`` does; also registered with ``weakref.finalize`` for an interpreter that exits first."""
    terminate(dict(reversed(list(processes.items()))))
    processes.clear()
    for log in logs:
        log.close()
    logs.clear()
    for path in workdir:
        shutil.rmtree(path, ignore_errors=True)
    workdir.clear()


class RealControlPlane:
    """etcd + kube-apiserver + kube-controller-manager from ``../shared/kube`` (see the module docstring).

    ``extra_addresses``: more addresses of this machine to serve the API on, at the same port (a lab
    gateway; checked by ``check_extra_address``); the serving certificate covers them. ``cluster-info``
    and ``kubeadm-config`` advertise ``advertise_address`` (default: the first extra address, else
    127.0.0.1), which is what ``kubeadm join`` uses after discovery. ``kubelet_config`` overrides keys of
    ``realkube_objects.KUBELET_CONFIGURATION`` in ``kube-system/kubelet-config``.
    """

    def __init__(
        self,
        extra_addresses: Iterable[str] = (),
        *,
        advertise_address: str | None = None,
        kubelet_config: Mapping[str, Any] | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.extra_addresses = tuple(dict.fromkeys(check_extra_address(a) for a in extra_addresses))
        self.advertise_address = advertise_address or (
            self.extra_addresses[0] if self.extra_addresses else "127.0.0.1"
        )
        if self.advertise_address not in ("127.0.0.1", *self.extra_addresses):
            raise ValueError(
                f"advertise_address {self.advertise_address} is neither 127.0.0.1 nor an extra address"
            )
        self.kubelet_config = dict(kubelet_config or {})
        self.start_timeout = start_timeout
        self.shared = shared_kube_dir()
        self.port = 0
        self.version = ""
        self.etcd_version = ""
        self.workdir: Path | None = None
        self.pki: realkube_pki.Pki | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._workdirs: list[Path] = []
        self._finalizer = weakref.finalize(self, _cleanup, self.processes, self._logs, self._workdirs)
        self._deadline = 0.0

    # -- what users read -----------------------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        return _url("127.0.0.1", self.port)

    def url_for(self, address: str) -> str:
        if address not in ("127.0.0.1", *self.extra_addresses):
            raise ValueError(f"the API is not served on {address}")
        return _url(address, self.port)

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate CN=realkube-admin, O=system:masters; 127.0.0.1)."""
        return self._dir / "admin.conf"

    @property
    def ca_pem(self) -> bytes:
        return self._pki.ca_pem

    @property
    def ca_cert_hash(self) -> str:
        return self._pki.ca_cert_hash

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    @property
    def description(self) -> str:
        """What run reports say ran: ``real kube-apiserver v1.32.13 from ../shared/kube``."""
        return f"real kube-apiserver {self.version} from {shared_label(self.shared)}"

    def write_kubeconfig(self, path: str | os.PathLike[str], address: str = "127.0.0.1") -> Path:
        """An admin kubeconfig for the API at ``address`` (127.0.0.1 or an extra address), mode 0600."""
        text = realkube_pki.client_kubeconfig(self._pki, self.url_for(address), "admin")
        return realkube_pki.write_private(Path(path), text)

    def api_client(self) -> k8s.ApiClient:
        """An official-client ``ApiClient`` with the admin credentials (close it after use)."""
        configuration = k8s.Configuration()
        configuration.host = self.server_url
        configuration.ssl_ca_cert = str(self._pki.file("ca.crt"))
        configuration.cert_file = str(self._pki.file("admin.crt"))
        configuration.key_file = str(self._pki.file("admin.key"))
        return k8s.ApiClient(configuration)

    def set_advertise_address(self, address: str) -> None:
        """Advertise ``address`` in ``cluster-info`` and ``kubeadm-config`` (the signer signs it again)."""
        self.url_for(address)
        self.advertise_address = address
        self._create_kubeadm_objects()

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise RealKubeError("the control plane is not started")
        return self.workdir

    @property
    def _pki(self) -> realkube_pki.Pki:
        if self.pki is None:
            raise RealKubeError("the control plane is not started")
        return self.pki

    # -- life cycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self.processes:
            raise RealKubeError("already started")
        self._deadline = time.monotonic() + self.start_timeout
        try:
            apiserver = kube_binary("kube-apiserver", self.shared)
            controller_manager = kube_binary("kube-controller-manager", self.shared)
            etcd = etcd_binary()
            _sweep_scratch_dirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            self._workdirs.append(self.workdir)
            (self.workdir / "owner.pid").write_text(str(os.getpid()))
            (self.workdir / "logs").mkdir()
            self.pki = realkube_pki.make_pki(
                self.workdir / "pki", [*self.extra_addresses, self.advertise_address]
            )
            self.etcd_version = self._etcd_version(etcd)
            etcd_url = self._start_etcd(etcd)
            self._start_apiserver(apiserver, etcd_url)
            self.version = self._get_json("/version")["gitVersion"]
            if self.extra_addresses:
                self._start_relay()
            self._create_kubeadm_objects()
            self._start_controller_manager(controller_manager)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ends every process by PID (SIGTERM, then SIGKILL after 10 s) and removes the scratch directory."""
        _cleanup(self.processes, self._logs, self._workdirs)

    # -- the parts -------------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        if shutil.which("setpriv"):  # SIGKILL when this process dies without stop(): no orphans
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        log = open(self._dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (closed by stop())
        self._logs.append(log)
        process = subprocess.Popen(
            command,
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the test run, which stops these
        )
        self.processes[name] = process
        return process

    def _log_tail(self, name: str, size: int = 1500) -> str:
        try:
            data = (self._dir / "logs" / f"{name}.log").read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()

    def _wait(self, name: str, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = min(self._deadline, time.monotonic() + timeout)
        last = "not yet"
        while True:
            process = self.processes[name]
            if process.poll() is not None:
                raise _Exited(f"{name} exited ({process.returncode}) before {what}:\n{self._log_tail(name)}")
            try:
                if check():
                    return
            except (
                OSError,
                ValueError,
                ApiException,
                http.client.HTTPException,
                urllib3.exceptions.HTTPError,
            ) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RealKubeError(
                    f"{name}: no {what} after {timeout:.0f}s ({last}):\n{self._log_tail(name)}"
                )
            time.sleep(0.2)

    def _retry_on_exit(self, name: str, attempt: Callable[[], None], attempts: int = 3) -> None:
        """Ports are chosen free but could be taken before the process binds them: then retry on new
        ones. Any other early exit is an error at once."""
        for n in range(attempts):
            try:
                attempt()
                return
            except _Exited as exc:
                if "address already in use" not in str(exc) or n == attempts - 1:
                    raise
                self.processes.pop(name).wait()

    @staticmethod
    def _etcd_version(etcd: Path) -> str:
        out = _run([str(etcd), "--version"], "etcd --version")
        return next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "etcd Version" in line), "?"
        )

    def _start_etcd(self, etcd: Path) -> str:
        data = self._dir / "etcd"
        url = ""

        def attempt() -> None:
            nonlocal url
            client, peer = _free_ports(2)
            url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            shutil.rmtree(data, ignore_errors=True)
            # the flags of reference/start-etcd.sh; 127.0.0.1 only, no TLS (nothing else can reach it)
            self._spawn(
                "etcd",
                [
                    str(etcd),
                    "--name=realkube",
                    f"--data-dir={data}",
                    f"--listen-client-urls={url}",
                    f"--advertise-client-urls={url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=realkube={peer_url}",
                    "--logger=zap",
                    "--log-level=warn",
                ],
            )

            def healthy() -> bool:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310 (http://127.0.0.1)
                    return json.loads(answer.read()).get("health") == "true"  # type: ignore[no-any-return]

            self._wait("etcd", "health", healthy, 60)

        self._retry_on_exit("etcd", attempt)
        return url

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._pki.file("ca.crt")))
        context.load_cert_chain(self._pki.file("admin.crt"), self._pki.file("admin.key"))
        return context

    def _get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.server_url + path)  # noqa: S310 (https://127.0.0.1)
        try:
            with urllib.request.urlopen(request, context=self._ssl_context(), timeout=5) as answer:  # noqa: S310
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _get_json(self, path: str) -> dict[str, Any]:
        status, body = self._get(path)
        if status != 200:
            raise RealKubeError(f"GET {path}: HTTP {status}")
        return json.loads(body)  # type: ignore[no-any-return]

    def _start_apiserver(self, binary: Path, etcd_url: str) -> None:
        pki = self._pki

        def attempt() -> None:
            (self.port,) = _free_ports(1, also_free_on=self.extra_addresses)
            for user, conf in (("admin", "admin.conf"), ("kcm", "kcm.conf")):
                realkube_pki.write_private(
                    self._dir / conf, realkube_pki.client_kubeconfig(pki, self.server_url, user)
                )
            # the flags of reference/start-apiserver.sh, at a free port
            self._spawn(
                "kube-apiserver",
                [
                    str(binary),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    "--advertise-address=127.0.0.1",
                    "--endpoint-reconciler-type=none",
                    f"--service-cluster-ip-range={realkube_objects.SERVICE_SUBNET}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={pki.file('sa.pub')}",
                    f"--service-account-signing-key-file={pki.file('sa.key')}",
                    f"--tls-cert-file={pki.file('apiserver.crt')}",
                    f"--tls-private-key-file={pki.file('apiserver.key')}",
                    f"--client-ca-file={pki.file('ca.crt')}",
                    f"--kubelet-client-certificate={pki.file('apiserver-kubelet-client.crt')}",
                    f"--kubelet-client-key={pki.file('apiserver-kubelet-client.key')}",
                    f"--cert-dir={self._dir / 'apiserver-certs'}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-bootstrap-token-auth",
                    "--enable-admission-plugins=NodeRestriction",
                    "--profiling=false",
                ],
            )
            self._wait("kube-apiserver", "/readyz", lambda: self._get("/readyz")[0] == 200, 120)

        self._retry_on_exit("kube-apiserver", attempt)

    def _start_relay(self) -> None:
        # run as a file: it needs only the standard library, and its cwd is the scratch directory
        self._spawn(
            "relay",
            [
                sys.executable,
                str(Path(__file__).with_name("realkube_relay.py")),
                f"--to=127.0.0.1:{self.port}",
                *(f"{_url(a, self.port).removeprefix('https://')}" for a in self.extra_addresses),
            ],
        )

        def listening() -> bool:
            return "ready" in self._log_tail("relay")

        self._wait("relay", "listening", listening, 30)

    def _create_kubeadm_objects(self) -> None:
        objects = realkube_objects.kubeadm_objects(
            server=self.url_for(self.advertise_address),
            ca_pem=self.ca_pem,
            version=self.version,
            kubelet_config=self.kubelet_config,
        )
        with self.api_client() as api:
            for kind, body in objects:
                # kube-system and kube-public appear shortly after /readyz (the apiserver's own controller)
                deadline = time.monotonic() + 60
                while True:
                    try:
                        realkube_objects.apply(api, kind, body)
                        break
                    except ApiException as exc:
                        if exc.status not in (404, 429, 500, 503) or time.monotonic() > deadline:
                            raise RealKubeError(
                                f"creating {kind} {body['metadata']['name']}: HTTP {exc.status} {exc.reason}"
                            ) from None
                        time.sleep(0.2)

    def _start_controller_manager(self, binary: Path) -> None:
        pki = self._pki
        # the flags of reference/join/cluster-up.sh: the bootstrap-token and CSR controllers, node lifecycle
        self._spawn(
            "kube-controller-manager",
            [
                str(binary),
                f"--kubeconfig={self._dir / 'kcm.conf'}",
                f"--controllers={CONTROLLERS}",
                f"--cluster-signing-cert-file={pki.file('ca.crt')}",
                f"--cluster-signing-key-file={pki.file('ca.key')}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--secure-port=0",
            ],
        )
        with self.api_client() as api:
            core = k8s.CoreV1Api(api)

            def controllers_running() -> bool:
                names = {sa.metadata.name for sa in core.list_namespaced_service_account("kube-system").items}
                return all(name in names for name in CONTROLLER_ACCOUNTS)

            self._wait("kube-controller-manager", "bootstrap-token controllers", controllers_running, 90)


# -- python -m testkit.realkube ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.realkube",
        description="Run a real control plane from ../shared/kube until ^C.",
    )
    parser.add_argument("--check", action="store_true", help="only say whether it is available")
    parser.add_argument(
        "--extra-address", action="append", default=[], help="also serve the API here (lab gateway)"
    )
    parser.add_argument("--kubeconfig-out", type=Path, help="also write the admin kubeconfig here")
    args = parser.parse_args(argv)
    status = available()
    if args.check or not status:
        print(("available: " if status else "not available: ") + status.reason)
        return 0 if status else 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with RealControlPlane(args.extra_address) as plane:
        if args.kubeconfig_out:
            plane.write_kubeconfig(args.kubeconfig_out)
        print(f"{plane.description} (etcd {plane.etcd_version}) at {plane.server_url}", flush=True)
        for address in plane.extra_addresses:
            print(f"  also at {plane.url_for(address)}")
        print(f"  kubeconfig {args.kubeconfig_out or plane.kubeconfig}  pids {plane.pids}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())

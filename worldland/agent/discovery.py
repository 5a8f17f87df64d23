"""What the provider machine is: its GPUs (NVML, else ``nvidia-smi``), its host facts, and the registration's
``spec`` in the deployed Go agent's field names (DESIGN.md, "Wire protocol"); per-GPU usage for heartbeats.

GPUs come from NVML (``nvidia-ml-py``) first. When NVML's library is missing they come from
``nvidia-smi --query-gpu=... --format=csv,noheader,nounits``, and their CUDA version from the header of a
plain ``nvidia-smi`` run ("CUDA Version: 12.4"; ``""`` when that run fails or shows none). No driver or no GPU
gives zero GPUs and one warning line; a driver/library version mismatch (a driver upgraded without a reboot)
is named as such, with its fix, and never reported as "no GPU". GPU names stay as the driver reports them:
the registration canonicalises them (``worldland.domain.names``).

Nothing here calls an outside service: the public address is the setting, else the address of the default
route's interface. Commands run with argument lists and timeouts, never through a shell.
"""

from __future__ import annotations

import contextlib
import ipaddress
import platform
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pynvml

MIB = 2**20
GB = 10**9
NVIDIA_SMI_TIMEOUT_S = 30.0  # nvidia-smi takes seconds on a many-GPU host without persistence mode
NVIDIA_SMI_QUERY = [
    "--query-gpu=index,name,memory.total,uuid,driver_version,pci.bus_id",
    "--format=csv,noheader,nounits",
]
NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")  # the loaded kernel module's version
PROC_NET_ROUTE = Path("/proc/net/route")
PROC_NET_IPV6_ROUTE = Path("/proc/net/ipv6_route")
PROC_CPUINFO = Path("/proc/cpuinfo")
OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
MAX_TEXT = 128  # the listener's limit on os, kernel_ver and cpu_model

SOURCE_NVML = "nvml"
SOURCE_NVIDIA_SMI = "nvidia-smi"
SOURCE_NONE = "none"

_RTF_UP = 0x0001
_RTF_REJECT = 0x0200
# Interfaces whose private addresses are not the machine's own network: containers, bridges, overlays.
_VIRTUAL_PREFIXES = (
    "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tunl", "vxlan", "kube", "lxc",
    "lxd", "podman", "weave", "cilium", "genev", "nodelocaldns", "tun", "tap", "wg",
)  # fmt: skip
_PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.ip_network("fc00::/7")

_NVML_MISSING = (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_FunctionNotFound)
_MISMATCH_RE = re.compile(r"driver/library version mismatch", re.IGNORECASE)
_NVML_LIBRARY_VERSION_RE = re.compile(r"NVML library version:\s*([0-9][0-9.]*)")
_NO_DRIVER_RE = re.compile(r"couldn't communicate with the NVIDIA driver|driver not loaded", re.IGNORECASE)
_NO_DEVICES_RE = re.compile(r"No devices were found", re.IGNORECASE)
_CUDA_VERSION_RE = re.compile(r"CUDA Version:\s*([0-9]+\.[0-9]+)")
_KERNEL_MODULE_RE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+([0-9]+\.[0-9]+(?:\.[0-9]+)?)")
_NOT_AVAILABLE_RE = re.compile(r"^\[[^\]]*\]$")  # "[N/A]", "[Not Supported]", "[Unknown Error]"
_SPACES_RE = re.compile(r"\s+")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU as the driver reports it (``name`` raw, e.g. "NVIDIA A100-SXM4-80GB"; memory in MiB)."""

    index: int
    name: str
    memory_mb: int
    uuid: str
    driver_ver: str
    cuda_version: str
    pci_bus_id: str

    def to_wire(self) -> dict[str, object]:
        """The Go agent's per-GPU JSON object (``spec.gpus[]``)."""
        return {
            "index": self.index,
            "name": self.name,
            "memory_mb": self.memory_mb,
            "uuid": self.uuid,
            "driver_ver": self.driver_ver,
            "cuda_version": self.cuda_version,
            "pci_bus_id": self.pci_bus_id,
        }


@dataclass(frozen=True, slots=True)
class GpuReport:
    """What GPU discovery found.

    ``source``: what answered, ``"nvml"`` or ``"nvidia-smi"`` (also when it answered "no devices" or "version
    mismatch"), ``"none"`` when neither could be asked (no library, no command, no driver loaded).
    ``warning``: one line for the operator, or None when all went well. ``driver_mismatch``: the kernel module
    and the driver's library differ (fix: reboot); the GPUs are there but cannot be counted until then.
    """

    devices: tuple[GpuDevice, ...]
    source: str
    warning: str | None
    driver_mismatch: bool = False


def _text(value: object) -> str:
    """A driver string as text: bytes decoded as UTF-8 with errors replaced, NULs and edge spaces dropped."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value).replace("\x00", "").strip()


def _nvml_text(call: Callable[..., object], *args: object) -> str:
    """A string from an NVML call; pynvml decodes strictly, so undecodable bytes are recovered, replaced."""
    try:
        return _text(call(*args))
    except UnicodeDecodeError as exc:
        return _text(exc.object)


def _nvml_error_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version integer as "major.minor": 12040 -> "12.4"."""
    if version <= 0:
        return ""
    return f"{version // 1000}.{(version % 1000) // 10}"


def kernel_module_version(path: Path = NVIDIA_PROC_VERSION) -> str | None:
    """The loaded NVIDIA kernel module's version from ``/proc/driver/nvidia/version``, None when unknown."""
    try:
        match = _KERNEL_MODULE_RE.search(path.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def mismatch_warning(module_version: str | None, library_version: str | None) -> str:
    """The operator's line for a driver/library version mismatch, naming the versions when known."""
    module = (
        f"the loaded NVIDIA kernel module ({module_version})"
        if module_version
        else "the loaded kernel module"
    )
    library = (
        f"the installed driver library ({library_version})" if library_version else "the installed driver"
    )
    return (
        f"NVIDIA driver/library version mismatch: {module} is not the version of {library}, usually after "
        "a driver upgrade without a reboot; reboot so the new kernel module loads (GPUs are not reported "
        "until then)"
    )


def _no_gpu(source: str, reason: str) -> GpuReport:
    return GpuReport((), source, f"no NVIDIA GPU found: {reason}; reporting 0 GPUs", False)


def _mismatch(source: str, module_version: str | None, library_version: str | None) -> GpuReport:
    return GpuReport((), source, mismatch_warning(module_version, library_version), True)


def _nvml_cuda_version(nvml: ModuleType) -> str:
    for name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
        call = getattr(nvml, name, None)
        if call is None:
            continue
        try:
            return cuda_version_text(int(call()))
        except pynvml.NVMLError:
            continue
    return ""


def _nvml_bus_id(nvml: ModuleType, handle: object) -> str:
    info = nvml.nvmlDeviceGetPciInfo(handle)
    for field in ("busId", "busIdLegacy"):
        value = _text(getattr(info, field, b""))
        if value:
            return value
    return ""


def _nvml_devices(nvml: ModuleType) -> GpuReport:
    """The GPUs NVML sees; ``nvmlInit`` has succeeded. A device that fails is skipped and named."""
    try:
        driver = _nvml_text(nvml.nvmlSystemGetDriverVersion)
    except pynvml.NVMLError:
        driver = ""
    cuda = _nvml_cuda_version(nvml)
    count = int(nvml.nvmlDeviceGetCount())
    devices: list[GpuDevice] = []
    skipped: list[str] = []
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            devices.append(
                GpuDevice(
                    index=index,
                    name=_nvml_text(nvml.nvmlDeviceGetName, handle),
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
                    uuid=_nvml_text(nvml.nvmlDeviceGetUUID, handle),
                    driver_ver=driver,
                    cuda_version=cuda,
                    pci_bus_id=_nvml_bus_id(nvml, handle),
                )
            )
        except pynvml.NVMLError as exc:
            skipped.append(f"GPU {index} ({_nvml_error_text(exc)})")
    if count == 0:
        loaded = f" {driver}" if driver else ""
        return _no_gpu(SOURCE_NVML, f"the NVIDIA driver{loaded} is loaded but NVML reports no devices")
    warning = None
    if skipped:
        warning = f"NVML could not read {len(skipped)} of {count} GPUs, not reported: {', '.join(skipped)}"
    return GpuReport(tuple(devices), SOURCE_NVML, warning, False)


def _shutdown(nvml: ModuleType) -> None:
    with contextlib.suppress(pynvml.NVMLError):
        nvml.nvmlShutdown()


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return _SPACES_RE.sub(" ", line.strip())[:200]
    return "no output"


def _plain_cuda_version(run: Runner, command: str) -> str:
    """CUDA version from plain ``nvidia-smi``'s header ("CUDA Version: 12.4"), ``""`` when it does not say."""
    try:
        result = run([command], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    match = _CUDA_VERSION_RE.search(result.stdout or "")
    return match.group(1) if result.returncode == 0 and match else ""


def _probe_nvidia_smi(
    run: Runner, which: Callable[[str], str | None], why: str, module_file: Path
) -> GpuReport:
    command = which("nvidia-smi")
    if command is None:
        return _no_gpu(SOURCE_NONE, f"{why} and nvidia-smi is not on PATH")
    try:
        result = run(
            [command, *NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _no_gpu(SOURCE_NVIDIA_SMI, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s")
    except (OSError, subprocess.SubprocessError) as exc:
        return _no_gpu(SOURCE_NONE, f"{why} and nvidia-smi could not be run ({exc})")
    stdout, output = result.stdout or "", f"{result.stdout or ''}\n{result.stderr or ''}"
    if _MISMATCH_RE.search(output):
        library = _NVML_LIBRARY_VERSION_RE.search(output)
        library_version = library.group(1) if library else None
        return _mismatch(SOURCE_NVIDIA_SMI, kernel_module_version(module_file), library_version)
    if _NO_DRIVER_RE.search(output):
        return _no_gpu(SOURCE_NVIDIA_SMI, "nvidia-smi cannot reach the NVIDIA kernel driver (not loaded)")
    if _NO_DEVICES_RE.search(output) or (result.returncode == 0 and not stdout.strip()):
        return _no_gpu(SOURCE_NVIDIA_SMI, "nvidia-smi reports no devices")
    if result.returncode != 0:
        return _no_gpu(
            SOURCE_NVIDIA_SMI, f"nvidia-smi failed (exit {result.returncode}): {_first_line(output)}"
        )
    try:
        devices = parse_nvidia_smi_csv(stdout, _plain_cuda_version(run, command))
    except ValueError as exc:
        return _no_gpu(SOURCE_NVIDIA_SMI, f"nvidia-smi's output could not be read ({exc})")
    return GpuReport(devices, SOURCE_NVIDIA_SMI, None, False)


def probe_gpus(
    nvml: ModuleType | None = pynvml,
    run: Runner = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
    *,
    module_version_file: Path = NVIDIA_PROC_VERSION,
) -> GpuReport:
    """The machine's NVIDIA GPUs: NVML first, ``nvidia-smi`` when NVML's library is missing.

    Never raises for a machine's state: no driver, no GPU, a version mismatch or a failing tool all give a
    report with zero GPUs and one ``warning`` line (``driver_mismatch`` set for the mismatch).
    ``module_version_file`` (the loaded kernel module's version) only names versions in a mismatch warning.
    """
    if nvml is None:
        why = "the NVML bindings (nvidia-ml-py) are not available"
    else:
        try:
            nvml.nvmlInit()
        except pynvml.NVMLError_LibRmVersionMismatch:
            return _mismatch(SOURCE_NVML, kernel_module_version(module_version_file), None)
        except pynvml.NVMLError_DriverNotLoaded:
            return _no_gpu(SOURCE_NONE, "the NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded)")
        except _NVML_MISSING:
            why = "the NVML library (libnvidia-ml.so.1) is not installed"
        except pynvml.NVMLError as exc:
            why = f"NVML failed to start ({_nvml_error_text(exc)})"
        else:
            try:
                return _nvml_devices(nvml)
            except pynvml.NVMLError as exc:
                why = f"NVML failed ({_nvml_error_text(exc)})"
            finally:
                _shutdown(nvml)
    return _probe_nvidia_smi(run, which, why, module_version_file)


def _csv_value(field: str) -> str:
    return "" if _NOT_AVAILABLE_RE.match(field) else field


def _csv_int(field: str, what: str, default: int | None = None) -> int:
    value = _csv_value(field).removesuffix("MiB").strip()
    if not value:
        if default is None:
            raise ValueError(f"{what} is not available ({field!r})")
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what} {field!r} is not a whole number") from None
    if number < 0:
        raise ValueError(f"{what} {field!r} is negative")
    return number


def parse_nvidia_smi_csv(text: str, cuda_version: str = "") -> tuple[GpuDevice, ...]:
    """The GPUs in ``nvidia-smi --query-gpu=index,name,memory.total,uuid,driver_version,pci.bus_id
    --format=csv,noheader,nounits`` output.

    Blank lines and spaces around fields are ignored; "[N/A]"-style values become ``""`` (memory: 0); a comma
    inside a name is kept (the name is the one free-text field). A line that is not a GPU (too few fields, no
    index or name, a number that is not one) raises ``ValueError`` naming the line.
    """
    devices: list[GpuDevice] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        raw_fields = line.split(",")
        fields = [field.strip() for field in raw_fields]
        try:
            if len(fields) < 6:
                raise ValueError(f"has {len(fields)} fields, expected 6")
            name = _csv_value(",".join(raw_fields[1:-4]).strip())
            if not name:
                raise ValueError("has no GPU name")
            devices.append(
                GpuDevice(
                    index=_csv_int(fields[0], "index"),
                    name=name,
                    memory_mb=_csv_int(fields[-4], "memory.total", default=0),
                    uuid=_csv_value(fields[-3]),
                    driver_ver=_csv_value(fields[-2]),
                    cuda_version=cuda_version,
                    pci_bus_id=_csv_value(fields[-1]),
                )
            )
        except ValueError as exc:
            raise ValueError(f"nvidia-smi line {number} {line[:120]!r}: {exc}") from None
    return tuple(devices)


def gpu_usage(nvml: ModuleType | None = pynvml) -> tuple[list[float], list[int]]:
    """Per-GPU utilisation (%) and memory used (MiB) for heartbeats, by NVML index.

    ``([], [])`` when NVML is absent or any call fails: a heartbeat then carries no GPU figures rather than
    made-up ones. Initialises and shuts NVML down on each call (once per heartbeat interval).
    """
    if nvml is None:
        return [], []
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError:
        return [], []
    try:
        utilisation: list[float] = []
        used: list[int] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            utilisation.append(float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            used.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used) // MIB)
        return utilisation, used
    except pynvml.NVMLError:
        return [], []
    finally:
        _shutdown(nvml)


# Host facts


@dataclass(frozen=True, slots=True)
class HostFacts:
    """The machine as the registration describes it (``spec()``). Disk in GB (10**9 bytes), memory in MiB.

    ``public_ip`` is None when neither the setting nor a default route gave one: the caller must say so.
    """

    hostname: str
    public_ip: str | None
    private_ip: str | None
    os: str
    kernel_ver: str
    architecture: str
    cpu_model: str
    cpu_cores: int
    cpu_threads: int
    total_memory_mb: int
    total_disk_gb: int
    available_disk_gb: int
    gpus: GpuReport

    def spec(self) -> dict[str, object]:
        """The registration's ``spec`` in the Go agent's field names and order (absent addresses: ``""``)."""
        return {
            "hostname": self.hostname,
            "os": self.os,
            "kernel_ver": self.kernel_ver,
            "architecture": self.architecture,
            "cpu_model": self.cpu_model,
            "cpu_cores": self.cpu_cores,
            "cpu_threads": self.cpu_threads,
            "total_memory_mb": self.total_memory_mb,
            "gpus": [gpu.to_wire() for gpu in self.gpus.devices],
            "total_gpus": len(self.gpus.devices),
            "total_disk_gb": self.total_disk_gb,
            "available_disk_gb": self.available_disk_gb,
            "public_ip": self.public_ip or "",
            "private_ip": self.private_ip or "",
        }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _addresses(entries: Iterable[Any], family: socket.AddressFamily) -> list[str]:
    """The addresses of one family among psutil's ``snicaddr`` entries, IPv6 zones ("%eth0") dropped."""
    return [str(entry.address).split("%", 1)[0] for entry in entries if entry.family == family]


def _default_route_v4(text: str) -> str | None:
    """The interface of the lowest-metric IPv4 default route in ``/proc/net/route`` text."""
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            iface, destination, flags, metric, mask = (
                fields[0],
                fields[1],
                int(fields[3], 16),
                int(fields[6]),
                fields[7],
            )
        except ValueError:
            continue
        if destination != "00000000" or mask != "00000000" or not flags & _RTF_UP or flags & _RTF_REJECT:
            continue
        if best is None or metric < best[0]:
            best = (metric, iface)
    return best[1] if best else None


def _default_route_v6(text: str) -> str | None:
    """The interface of the lowest-metric IPv6 default route in ``/proc/net/ipv6_route`` text."""
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, prefix, metric, flags = (
                fields[0],
                int(fields[1], 16),
                int(fields[5], 16),
                int(fields[8], 16),
            )
        except ValueError:
            continue
        iface = fields[9]
        if destination.strip("0") or prefix != 0 or iface == "lo":
            continue
        if flags & _RTF_UP and not flags & _RTF_REJECT and (best is None or metric < best[0]):
            best = (metric, iface)
    return best[1] if best else None


def default_route_interface(route_file: Path = PROC_NET_ROUTE) -> str | None:
    """The IPv4 default route's interface, None when there is none."""
    return _default_route_v4(_read(route_file))


def default_route_address(
    route_file: Path = PROC_NET_ROUTE,
    ipv6_route_file: Path = PROC_NET_IPV6_ROUTE,
    addrs: Mapping[str, Sequence[Any]] | None = None,
) -> str | None:
    """The address of the default route's interface: its first IPv4 address, else (no IPv4 default route) the
    first global IPv6 address of the IPv6 default route's interface; None when there is no default route.

    Read from the kernel's tables and psutil, never asked of an outside service. Behind NAT this is a private
    address, which the listener accepts only with ``allow_private_ips``: set ``public_ip`` there.
    """
    addrs = psutil.net_if_addrs() if addrs is None else addrs
    iface = _default_route_v4(_read(route_file))
    if iface is not None:
        for address in _addresses(addrs.get(iface, ()), socket.AF_INET):
            if not ipaddress.ip_address(address).is_loopback:
                return address
    iface6 = _default_route_v6(_read(ipv6_route_file))
    if iface6 is not None:
        for address in _addresses(addrs.get(iface6, ()), socket.AF_INET6):
            parsed = ipaddress.ip_address(address)
            if not (parsed.is_link_local or parsed.is_loopback or parsed.is_multicast):
                return address
    return None


def _is_virtual(iface: str) -> bool:
    return iface == "lo" or iface.startswith(_VIRTUAL_PREFIXES)


def private_address(
    addrs: Mapping[str, Sequence[Any]] | None = None,
    stats: Mapping[str, Any] | None = None,
    prefer: str | None = None,
) -> str | None:
    """The first RFC 1918 IPv4 address, else the first ULA (fc00::/7) IPv6 address, on an up, non-loopback,
    non-virtual interface (container bridges, veths and overlays are skipped); ``prefer`` (the default route's
    interface) is looked at first. None when there is none."""
    addrs = psutil.net_if_addrs() if addrs is None else addrs
    stats = psutil.net_if_stats() if stats is None else stats
    names = [name for name in addrs if not _is_virtual(name) and getattr(stats.get(name), "isup", False)]
    names.sort(key=lambda name: name != prefer)  # stable: the preferred first, the others as listed
    for family, networks in ((socket.AF_INET, _PRIVATE_V4), (socket.AF_INET6, (_ULA,))):
        for name in names:
            for address in _addresses(addrs[name], family):
                parsed = ipaddress.ip_address(address)
                if any(parsed in network for network in networks):
                    return address
    return None


def os_pretty_name(paths: Iterable[Path] = OS_RELEASE) -> str:
    """``PRETTY_NAME`` of os-release (quotes and escapes as the shell reads them), else the system's name."""
    for path in paths:
        for line in _read(path).splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key == "PRETTY_NAME":
                try:
                    words = shlex.split(value)
                except ValueError:
                    words = [value.strip("\"'")]
                if words and words[0].strip():
                    return _short(" ".join(words))
    return _short(platform.system())


def cpu_model(cpuinfo: Path = PROC_CPUINFO) -> str:
    """The CPU's "model name" in ``/proc/cpuinfo`` (spaces collapsed), else ``platform.processor()``."""
    for line in _read(cpuinfo).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return _short(value)
    return _short(platform.processor())


def _short(text: str) -> str:
    return _SPACES_RE.sub(" ", text).strip()[:MAX_TEXT]


def disk_gb(path: Path) -> tuple[int, int]:
    """Total and free GB (10**9 bytes) of the file system holding ``path`` (its nearest existing parent)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.total // GB, usage.free // GB


def discover(
    public_ip: str | None,
    data_path: Path,
    *,
    probe: Callable[[], GpuReport] = probe_gpus,
) -> HostFacts:
    """This machine's facts. ``public_ip``: the setting, else the address of the default route's interface."""
    route_iface = default_route_interface()
    logical = psutil.cpu_count(logical=True) or 1
    total_disk, free_disk = disk_gb(data_path)
    return HostFacts(
        hostname=socket.gethostname(),
        public_ip=public_ip or default_route_address(),
        private_ip=private_address(prefer=route_iface),
        os=os_pretty_name(),
        kernel_ver=_short(platform.release()),
        architecture=platform.machine(),
        cpu_model=cpu_model(),
        cpu_cores=psutil.cpu_count(logical=False) or logical,
        cpu_threads=logical,
        total_memory_mb=psutil.virtual_memory().total // MIB,
        total_disk_gb=total_disk,
        available_disk_gb=free_disk,
        gpus=probe(),
    )

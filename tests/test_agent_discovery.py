"""The agent's discovery (worldland/agent/discovery.py): GPUs from NVML and from nvidia-smi's CSV (fixtures in
tests/data/nvidia-smi/), no GPU, driver/library version mismatch, the host facts, and the spec as the
registration carries it, checked by the listener's own parser."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pynvml
import pytest

from tests.conftest import REPO, load_protocol
from worldland.agent import discovery
from worldland.agent.discovery import (
    GpuDevice,
    GpuReport,
    HostFacts,
    cpu_model,
    cuda_version_text,
    default_route_address,
    discover,
    disk_gb,
    gpu_usage,
    kernel_module_version,
    os_pretty_name,
    parse_nvidia_smi_csv,
    private_address,
    probe_gpus,
)
from worldland.domain.registration import parse_registration

SMI = REPO / "tests" / "data" / "nvidia-smi"
NVIDIA_SMI = "/usr/bin/nvidia-smi"
WALLET = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"
PCI_BUS_ID = re.compile(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]")
GPU_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# fixture, canonical models it holds, driver, CUDA version of its plain nvidia-smi header ("" = none recorded)
MACHINES = [
    ("a100-sxm4-80gb-x8", {"A100-SXM4-80GB": 8}, "550.54.15", "12.4"),
    ("h100-80gb-hbm3-x8", {"H100-80GB-HBM3": 8}, "535.161.08", ""),
    ("rtx-4090", {"RTX-4090": 1}, "570.124.04", "12.8"),
    ("rtx-a6000-x4", {"RTX-A6000": 4}, "535.183.01", ""),
    ("two-models", {"RTX-4090": 1, "RTX-3090": 2}, "550.120", ""),
]
MACHINE_IDS = [machine[0] for machine in MACHINES]


def fixture(name: str) -> str:
    return (SMI / name).read_text()


def nvml_error(code: int) -> pynvml.NVMLError:
    """pynvml's own exception for a return code, as the library raises it (the subclass)."""
    return pynvml.NVMLError(code)


# -- a fake nvidia-smi --------------------------------------------------------------------------------


class FakeSmi:
    """``subprocess.run`` standing in for nvidia-smi: the query answers ``query``, a plain run ``plain``."""

    def __init__(
        self,
        query: str,
        rc: int = 0,
        plain: str | None = None,
        stderr: str = "",
        raises: Exception | None = None,
    ) -> None:
        self.query, self.rc, self.plain, self.stderr, self.raises = query, rc, plain, stderr, raises
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert isinstance(argv, list), "commands run as argument lists"
        assert not kwargs.get("shell"), "never through a shell"
        assert kwargs.get("timeout"), "always with a timeout"
        self.calls.append((argv, kwargs))
        if self.raises is not None:
            raise self.raises
        if argv[1:]:
            return subprocess.CompletedProcess(argv, self.rc, self.query, self.stderr)
        if self.plain is None:
            return subprocess.CompletedProcess(argv, 9, "", "")
        return subprocess.CompletedProcess(argv, 0, self.plain, "")


def which_smi(name: str) -> str | None:
    assert name == "nvidia-smi"
    return NVIDIA_SMI


def which_nothing(name: str) -> str | None:
    return None


def not_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"nvidia-smi must not run here: {argv}")


def machine_smi(name: str) -> FakeSmi:
    plain = SMI / f"{name}.plain.txt"
    return FakeSmi(fixture(f"{name}.csv"), plain=plain.read_text() if plain.exists() else None)


# -- a fake NVML: the functions are ours, the errors pynvml's ---------------------------------------------


class FakeNvml(ModuleType):
    """NVML's Python surface over a list of devices; each call may be made to raise pynvml's own errors."""

    def __init__(
        self,
        devices: Iterable[GpuDevice] = (),
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        init_error: int | None = None,
        fail: dict[tuple[str, int], Exception] | None = None,
        names: dict[int, object] | None = None,
        utilisation: Iterable[float] = (),
        used_mb: Iterable[int] = (),
    ) -> None:
        super().__init__("fake_pynvml")
        self.devices, self.driver, self.cuda, self.init_error = list(devices), driver, cuda, init_error
        self.fail = fail or {}
        self.names = names or {}
        self.utilisation, self.used_mb = list(utilisation), list(used_mb)
        self.inits = self.shutdowns = 0

    def _check(self, call: str, index: int = -1) -> None:
        if (call, index) in self.fail:
            raise self.fail[call, index]

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise nvml_error(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        if self.inits <= self.shutdowns:
            raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("driver")
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._check("cuda")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._check("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check("handle", index)
        if not 0 <= index < len(self.devices):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, handle: int) -> object:
        self._check("name", handle)
        return self.names.get(handle, self.devices[handle].name)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.devices[handle].uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._check("memory", handle)
        total = self.devices[handle].memory_mb * 2**20
        used = self.used_mb[handle] * 2**20 if self.used_mb else 0
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetPciInfo(self, handle: int) -> SimpleNamespace:
        bus_id = self.devices[handle].pci_bus_id.encode()  # ctypes gives c_char arrays as bytes
        return SimpleNamespace(busId=bus_id, busIdLegacy=bus_id, domain=0, bus=0, device=0)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        self._check("utilisation", handle)
        return SimpleNamespace(gpu=self.utilisation[handle], memory=0)


def machine_nvml(name: str, driver: str, **kwargs: Any) -> FakeNvml:
    return FakeNvml(parse_nvidia_smi_csv(fixture(f"{name}.csv")), driver=driver, **kwargs)


# -- a registration of discovered facts, parsed by the listener's parser ----------------------------------


def host_facts(gpus: GpuReport, **changes: Any) -> HostFacts:
    facts = HostFacts(
        hostname="rig-07",
        public_ip="203.0.113.7",
        private_ip="10.0.0.7",
        os="Ubuntu 22.04.4 LTS",
        kernel_ver="5.15.0-105-generic",
        architecture="x86_64",
        cpu_model="AMD EPYC 7543 32-Core Processor",
        cpu_cores=32,
        cpu_threads=64,
        total_memory_mb=257698,
        total_disk_gb=1800,
        available_disk_gb=1500,
        gpus=gpus,
    )
    return dataclasses.replace(facts, **changes)


def registration_json(facts: HostFacts) -> str:
    return json.dumps(
        {
            "provider_id": WALLET,
            "wallet_addr": WALLET,
            "spec": facts.spec(),
            "agent_version": "0.1.0",
            "timestamp": "2026-11-26T09:15:02Z",
        }
    )


# -- parse_nvidia_smi_csv: the recorded machines ----------------------------------------------------------


@pytest.mark.parametrize(("name", "models", "driver", "cuda"), MACHINES, ids=MACHINE_IDS)
def test_recorded_machines_parse(name: str, models: dict[str, int], driver: str, cuda: str) -> None:
    devices = parse_nvidia_smi_csv(fixture(f"{name}.csv"), cuda_version="12.4")
    assert len(devices) == sum(models.values())
    assert [gpu.index for gpu in devices] == list(range(len(devices)))
    for gpu in devices:
        assert gpu.name.startswith("NVIDIA ")  # as the driver reports it: canonicalised later
        assert gpu.memory_mb > 20_000
        assert GPU_UUID.fullmatch(gpu.uuid), gpu.uuid
        assert PCI_BUS_ID.fullmatch(gpu.pci_bus_id), gpu.pci_bus_id
        assert gpu.driver_ver == driver
        assert gpu.cuda_version == "12.4"
    assert len({gpu.uuid for gpu in devices}) == len(devices)
    assert len({gpu.pci_bus_id for gpu in devices}) == len(devices)


def test_a100_row_is_the_go_agents_gpu_object() -> None:
    first = parse_nvidia_smi_csv(fixture("a100-sxm4-80gb-x8.csv"), "12.4")[0]
    agent = load_protocol("registration.agent.json")["spec"]["gpus"][0]
    assert first.to_wire() == agent
    assert list(first.to_wire()) == list(agent)  # the Go agent's field names, in its order


def test_csv_is_read_robustly() -> None:
    text = (
        "\n  0 ,  NVIDIA GeForce RTX 4090 , 24564 MiB ,GPU-8e2f1b6d-4a93-c07e-5d18-b3f6a0e9c452, 570.124.04 ,"
        " 00000000:01:00.0  \r\n\n"
        "1, NVIDIA H100 80GB HBM3, [N/A], [N/A], 535.161.08, [Not Supported]\n"
        "2, NVIDIA Odd, Name, 8192, GPU-1, 550.54.15, 00000000:03:00.0\n   \n"
    )
    devices = parse_nvidia_smi_csv(text)
    assert devices[0] == GpuDevice(
        0, "NVIDIA GeForce RTX 4090", 24564, "GPU-8e2f1b6d-4a93-c07e-5d18-b3f6a0e9c452", "570.124.04", "",
        "00000000:01:00.0",
    )  # fmt: skip
    assert (devices[1].memory_mb, devices[1].uuid, devices[1].pci_bus_id) == (0, "", "")
    assert devices[2].name == "NVIDIA Odd, Name"  # a comma inside the one free-text field is kept
    assert parse_nvidia_smi_csv(fixture("no-gpu.csv")) == ()
    assert parse_nvidia_smi_csv("\n \n") == ()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0, NVIDIA A100-SXM4-80GB, 81920", "has 3 fields, expected 6"),
        (
            "x, NVIDIA A100-SXM4-80GB, 81920, GPU-1, 550.54.15, 00000000:07:00.0",
            "index 'x' is not a whole number",
        ),
        ("[N/A], NVIDIA A100-SXM4-80GB, 81920, GPU-1, 550.54.15, 00000000:07:00.0", "index is not available"),
        ("0, , 81920, GPU-1, 550.54.15, 00000000:07:00.0", "has no GPU name"),
        ("0, NVIDIA A100-SXM4-80GB, lots, GPU-1, 550.54.15, 00000000:07:00.0", "memory.total 'lots'"),
        ("0, NVIDIA A100-SXM4-80GB, -1, GPU-1, 550.54.15, 00000000:07:00.0", "is negative"),
        ("Failed to initialize NVML: Unknown Error", "has 1 fields"),
    ],
)
def test_malformed_csv_line_is_refused_naming_it(line: str, reason: str) -> None:
    good = "0, NVIDIA RTX A6000, 49140, GPU-2, 535.183.01, 00000000:01:00.0\n"
    with pytest.raises(ValueError, match="nvidia-smi line 2 ") as caught:
        parse_nvidia_smi_csv(good + line + "\n")
    assert reason in str(caught.value)
    assert line[:40] in str(caught.value)


# -- probe_gpus through nvidia-smi (NVML's library missing) -----------------------------------------------


@pytest.mark.parametrize(("name", "models", "driver", "cuda"), MACHINES, ids=MACHINE_IDS)
def test_nvidia_smi_fallback_when_nvml_library_is_missing(
    name: str, models: dict[str, int], driver: str, cuda: str
) -> None:
    missing = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    smi = machine_smi(name)
    report = probe_gpus(missing, smi, which_smi)
    assert (report.source, report.warning, report.driver_mismatch) == ("nvidia-smi", None, False)
    assert len(report.devices) == sum(models.values())
    assert {gpu.cuda_version for gpu in report.devices} == {cuda}  # the plain header's, else ""
    assert {gpu.driver_ver for gpu in report.devices} == {driver}
    query = [NVIDIA_SMI, "--query-gpu=index,name,memory.total,uuid,driver_version,pci.bus_id"]
    assert smi.calls[0][0] == [*query, "--format=csv,noheader,nounits"]
    assert smi.calls[1][0] == [NVIDIA_SMI]
    assert missing.shutdowns == 0  # never started, never shut down


def test_no_bindings_at_all_uses_nvidia_smi() -> None:
    report = probe_gpus(None, machine_smi("rtx-4090"), which_smi)
    assert report.source == "nvidia-smi"
    assert [gpu.name for gpu in report.devices] == ["NVIDIA GeForce RTX 4090"]


def test_nvidia_smi_empty_output_is_no_gpu_with_one_warning() -> None:
    report = probe_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), FakeSmi(""), which_smi)
    assert report.devices == ()
    assert report.driver_mismatch is False
    assert report.warning is not None and "\n" not in report.warning
    assert report.warning.startswith("no NVIDIA GPU found")


@pytest.mark.parametrize(
    ("fixture_name", "rc"),
    [("driver-mismatch.txt", 18), ("driver-mismatch.txt", 0), ("driver-mismatch.txt", 255)],
)
def test_nvidia_smi_driver_mismatch_is_named_with_its_fix(fixture_name: str, rc: int) -> None:
    smi = FakeSmi(fixture(fixture_name), rc=rc)
    report = probe_gpus(
        FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND),
        smi,
        which_smi,
        module_version_file=SMI / "proc-driver-nvidia-version.txt",
    )
    assert report.driver_mismatch is True
    assert report.devices == ()
    assert report.source == "nvidia-smi"
    warning = report.warning or ""
    assert "driver/library version mismatch" in warning
    assert "reboot" in warning
    assert "535.154.05" in warning and "550.90" in warning  # kernel module's and library's versions
    assert "no NVIDIA GPU" not in warning
    assert "\n" not in warning
    assert len(smi.calls) == 1


def test_nvidia_smi_mismatch_on_stderr_is_seen_too() -> None:
    smi = FakeSmi("", rc=18, stderr="Failed to initialize NVML: Driver/library version mismatch\n")
    report = probe_gpus(None, smi, which_smi, module_version_file=Path("/nonexistent"))
    assert report.driver_mismatch is True
    assert "reboot" in (report.warning or "")


@pytest.mark.parametrize(
    ("smi", "expected"),
    [
        (FakeSmi(fixture("no-driver.txt"), rc=9), "cannot reach the NVIDIA kernel driver"),
        (FakeSmi(fixture("no-devices.txt"), rc=6), "nvidia-smi reports no devices"),
        (
            FakeSmi("Unable to determine the device handle for GPU0000:07:00.0: Unknown Error", rc=255),
            "exit 255",
        ),
        (FakeSmi("", raises=subprocess.TimeoutExpired(NVIDIA_SMI, 30)), "did not answer within 30 s"),
        (FakeSmi("", raises=PermissionError(13, "Permission denied")), "could not be run"),
        (FakeSmi("0, NVIDIA RTX A6000, 49140\n"), "could not be read (nvidia-smi line 1"),
    ],
    ids=["no-driver", "no-devices", "other-failure", "timeout", "not-executable", "garbled"],
)
def test_nvidia_smi_failures_are_zero_gpus_and_one_warning(smi: FakeSmi, expected: str) -> None:
    report = probe_gpus(None, smi, which_smi)
    assert report.devices == ()
    assert report.driver_mismatch is False
    assert report.warning is not None and expected in report.warning, report.warning
    assert "\n" not in report.warning


def test_no_library_and_no_nvidia_smi() -> None:
    report = probe_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), not_run, which_nothing)
    assert (report.devices, report.source, report.driver_mismatch) == ((), "none", False)
    assert report.warning == (
        "no NVIDIA GPU found: the NVML library (libnvidia-ml.so.1) is not installed and nvidia-smi is not on "
        "PATH; reporting 0 GPUs"
    )


# -- probe_gpus through NVML ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "models", "driver", "cuda"), MACHINES, ids=MACHINE_IDS)
def test_nvml_path_gives_what_nvidia_smi_gives(
    name: str, models: dict[str, int], driver: str, cuda: str
) -> None:
    nvml = machine_nvml(name, driver, cuda=12040)
    report = probe_gpus(nvml, not_run, which_smi)
    assert (report.source, report.warning, report.driver_mismatch) == ("nvml", None, False)
    assert report.devices == parse_nvidia_smi_csv(fixture(f"{name}.csv"), cuda_version="12.4")
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


@pytest.mark.parametrize(
    ("code", "module_file", "named"),
    [
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "proc-driver-nvidia-version.txt", "(535.154.05)"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "proc-driver-nvidia-version.open.txt", "(550.54.15)"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "absent", "the loaded kernel module is"),
    ],
)
def test_nvml_version_mismatch_is_named_not_no_gpu(code: int, module_file: str, named: str) -> None:
    error = nvml_error(code)
    assert type(error) is pynvml.NVMLError_LibRmVersionMismatch  # the library's own class
    nvml = FakeNvml(init_error=code)
    report = probe_gpus(nvml, not_run, which_smi, module_version_file=SMI / module_file)
    assert (report.devices, report.source, report.driver_mismatch) == ((), "nvml", True)
    warning = report.warning or ""
    assert warning.startswith("NVIDIA driver/library version mismatch: ")
    assert "reboot so the new kernel module loads" in warning
    assert named in warning
    assert "no NVIDIA GPU" not in warning
    assert nvml.shutdowns == 0


def test_nvml_driver_not_loaded_is_no_gpu_with_a_warning() -> None:
    assert type(nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)) is pynvml.NVMLError_DriverNotLoaded
    report = probe_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), not_run, which_smi)
    assert (report.devices, report.source, report.driver_mismatch) == ((), "none", False)
    assert report.warning == (
        "no NVIDIA GPU found: the NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded); "
        "reporting 0 GPUs"
    )


def test_nvml_zero_devices_is_no_gpu_with_a_warning() -> None:
    nvml = FakeNvml([], driver="550.54.15")
    report = probe_gpus(nvml, not_run, which_smi)
    assert (report.devices, report.source, report.driver_mismatch) == ((), "nvml", False)
    assert report.warning is not None
    assert "550.54.15 is loaded but NVML reports no devices" in report.warning
    assert nvml.shutdowns == 1


def test_nvml_other_start_failure_falls_back_to_nvidia_smi() -> None:
    nvml = FakeNvml(init_error=pynvml.NVML_ERROR_NO_PERMISSION)
    report = probe_gpus(nvml, machine_smi("rtx-4090"), which_smi)
    assert report.source == "nvidia-smi" and len(report.devices) == 1
    report = probe_gpus(nvml, not_run, which_nothing)
    assert report.warning is not None
    assert "NVML failed to start (Insufficient Permissions)" in report.warning


def test_nvml_failure_after_start_still_shuts_down() -> None:
    devices = parse_nvidia_smi_csv(fixture("rtx-a6000-x4.csv"))
    nvml = FakeNvml(devices, fail={("count", -1): nvml_error(pynvml.NVML_ERROR_UNKNOWN)})
    report = probe_gpus(nvml, not_run, which_nothing)
    assert report.devices == ()
    assert nvml.shutdowns == 1
    assert "NVML failed (Unknown Error)" in (report.warning or "")


def test_nvml_device_that_fails_is_skipped_and_named() -> None:
    devices = parse_nvidia_smi_csv(fixture("a100-sxm4-80gb-x8.csv"))
    lost = nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
    nvml = FakeNvml(devices, fail={("memory", 3): lost})
    report = probe_gpus(nvml, not_run, which_smi)
    assert [gpu.index for gpu in report.devices] == [0, 1, 2, 4, 5, 6, 7]
    assert report.warning == "NVML could not read 1 of 8 GPUs, not reported: GPU 3 (GPU is lost)"
    assert nvml.shutdowns == 1


def test_nvml_names_are_decoded_with_replacement() -> None:
    devices = parse_nvidia_smi_csv(fixture("two-models.csv"))
    # Older bindings return bytes; nvidia-ml-py decodes strictly and raises on bytes that are not UTF-8.
    strict = UnicodeDecodeError("utf-8", b"NVIDIA GeForce RTX 3090\xff", 23, 24, "invalid start byte")

    class StrictNames(FakeNvml):
        def nvmlDeviceGetName(self, handle: int) -> object:
            if handle == 2:
                raise strict
            return super().nvmlDeviceGetName(handle)

    nvml = StrictNames(devices, names={0: b"NVIDIA GeForce RTX 4090\x00", 1: b"NVIDIA GeForce RTX 3090\xfe"})
    names = [gpu.name for gpu in probe_gpus(nvml, not_run, which_smi).devices]
    assert names == [
        "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 3090\ufffd",
        "NVIDIA GeForce RTX 3090\ufffd",
    ]


def test_cuda_version_text() -> None:
    assert [cuda_version_text(v) for v in (12040, 12020, 11080, 12080, 13000, 0)] == [
        "12.4", "12.2", "11.8", "12.8", "13.0", "",
    ]  # fmt: skip


def test_cuda_version_falls_back_to_the_old_call_and_else_is_empty() -> None:
    devices = parse_nvidia_smi_csv(fixture("rtx-4090.csv"))
    nvml = FakeNvml(devices, fail={("cuda", -1): nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)})
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12080  # type: ignore[attr-defined]
    assert probe_gpus(nvml, not_run, which_smi).devices[0].cuda_version == "12.8"
    nvml = FakeNvml(devices, fail={("cuda", -1): nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)})
    assert probe_gpus(nvml, not_run, which_smi).devices[0].cuda_version == ""


def test_kernel_module_version() -> None:
    assert kernel_module_version(SMI / "proc-driver-nvidia-version.txt") == "535.154.05"
    assert kernel_module_version(SMI / "proc-driver-nvidia-version.open.txt") == "550.54.15"
    assert kernel_module_version(SMI / "absent") is None


# -- gpu_usage (heartbeats) -------------------------------------------------------------------------------


def test_gpu_usage_per_gpu() -> None:
    devices = parse_nvidia_smi_csv(fixture("two-models.csv"))
    nvml = FakeNvml(devices, utilisation=[97, 0, 43.5], used_mb=[23_010, 0, 12_288])
    assert gpu_usage(nvml) == ([97.0, 0.0, 43.5], [23_010, 0, 12_288])
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_gpu_usage_without_nvml_or_when_it_fails() -> None:
    assert gpu_usage(None) == ([], [])
    assert gpu_usage(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)) == ([], [])
    assert gpu_usage(FakeNvml(init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)) == ([], [])
    devices = parse_nvidia_smi_csv(fixture("rtx-a6000-x4.csv"))
    nvml = FakeNvml(
        devices,
        utilisation=[1, 2, 3, 4],
        used_mb=[1, 2, 3, 4],
        fail={("utilisation", 2): nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)},
    )
    assert gpu_usage(nvml) == ([], [])
    assert nvml.shutdowns == 1
    assert gpu_usage(FakeNvml([])) == ([], [])


# -- the spec, parsed by the listener ---------------------------------------------------------------------


def test_spec_has_the_go_agents_fields_in_its_order() -> None:
    agent = load_protocol("registration.agent.json")["spec"]
    report = GpuReport(parse_nvidia_smi_csv(fixture("a100-sxm4-80gb-x8.csv"), "12.4")[:2], "nvidia-smi", None)
    spec = host_facts(report, public_ip="123.45.67.90").spec()
    assert list(spec) == list(agent)
    assert spec == agent  # the shared example is exactly a two-A100 machine as discovery reports it


@pytest.mark.parametrize("source", ["nvml", "nvidia-smi"])
@pytest.mark.parametrize(("name", "models", "driver", "cuda"), MACHINES, ids=MACHINE_IDS)
def test_discovered_gpus_register_as_their_canonical_models(
    source: str, name: str, models: dict[str, int], driver: str, cuda: str
) -> None:
    if source == "nvml":
        report = probe_gpus(machine_nvml(name, driver), not_run, which_nothing)
    else:
        report = probe_gpus(None, machine_smi(name), which_smi)
    assert report.source == source
    registration = parse_registration(registration_json(host_facts(report)), allow_private_ips=True)
    assert registration.hardware == models
    assert registration.spec.total_gpus == sum(models.values())
    assert [gpu.uuid for gpu in registration.spec.gpus] == [gpu.uuid for gpu in report.devices]
    assert registration.offered_gpus() == models


@pytest.mark.parametrize(
    "report",
    [
        probe_gpus(None, FakeSmi(""), which_smi),
        probe_gpus(None, FakeSmi(fixture("driver-mismatch.txt"), rc=18), which_smi),
        probe_gpus(FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED), not_run, which_smi),
    ],
    ids=["no-gpu", "mismatch", "no-driver"],
)
def test_gpuless_spec_registers_with_zero_gpus(report: GpuReport) -> None:
    facts = host_facts(report, private_ip=None)
    assert facts.spec()["gpus"] == [] and facts.spec()["total_gpus"] == 0
    assert facts.spec()["private_ip"] == ""
    registration = parse_registration(registration_json(facts), allow_private_ips=True)
    assert registration.hardware == {}
    assert registration.spec.private_ip is None


# -- host facts -------------------------------------------------------------------------------------------


def addr(family: socket.AddressFamily, address: str) -> SimpleNamespace:
    return SimpleNamespace(family=family, address=address, netmask=None, broadcast=None, ptp=None)


V4, V6 = socket.AF_INET, socket.AF_INET6
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
ADDRS = {
    "lo": [addr(V4, "127.0.0.1"), addr(V6, "::1")],
    "docker0": [addr(V4, "172.17.0.1")],
    "eno1": [addr(V4, "198.51.100.23"), addr(V6, "2001:db8::23"), addr(V6, "fe80::1%eno1")],
    "enp65s0": [addr(V6, "fd12:3456::7"), addr(V4, "192.168.1.40")],
    "wlan0": [addr(V4, "10.0.0.9")],
}
STATS = {name: SimpleNamespace(isup=name != "wlan0") for name in ADDRS}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_route_address_ipv4(tmp_path: Path) -> None:
    route = write(
        tmp_path,
        "route",
        ROUTE_HEADER
        + "enp65s0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        + "eno1\t00000000\t010064C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        + "eno1\t006433C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n",
    )
    assert default_route_address(route, tmp_path / "absent", ADDRS) == "198.51.100.23"  # lowest metric
    assert discovery.default_route_interface(route) == "eno1"


def test_default_route_address_ipv6_fallback(tmp_path: Path) -> None:
    route = write(
        tmp_path, "route", ROUTE_HEADER + "eno1\t006433C6\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
    )
    zero = "0" * 32
    ipv6 = write(
        tmp_path,
        "ipv6_route",
        f"{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo\n"
        f"{zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003 eno1\n",
    )
    assert default_route_address(route, ipv6, ADDRS) == "2001:db8::23"  # global, not link-local


def test_no_default_route_is_none(tmp_path: Path) -> None:
    route = write(
        tmp_path, "route", ROUTE_HEADER + "eno1\t00000000\t010064C6\t0201\t0\t0\t100\t00000000\t0\t0\t0\n"
    )  # a reject route is no way out
    assert default_route_address(route, tmp_path / "absent", ADDRS) is None
    assert default_route_address(tmp_path / "absent", tmp_path / "absent", ADDRS) is None


def test_private_address() -> None:
    # RFC 1918 before ULA; container bridges, loopback and down interfaces are not the machine's network.
    assert private_address(ADDRS, STATS) == "192.168.1.40"
    only_ula = {"eno1": ADDRS["eno1"], "enp65s0": [addr(V6, "fd12:3456::7")], "docker0": ADDRS["docker0"]}
    assert private_address(only_ula, STATS) == "fd12:3456::7"
    assert private_address({"lo": ADDRS["lo"], "docker0": ADDRS["docker0"]}, STATS) is None
    both = {"eth0": [addr(V4, "10.1.2.3")], "eth1": [addr(V4, "172.20.0.5")]}
    up = {name: SimpleNamespace(isup=True) for name in both}
    assert private_address(both, up) == "10.1.2.3"
    assert private_address(both, up, prefer="eth1") == "172.20.0.5"


def test_os_pretty_name(tmp_path: Path) -> None:
    ubuntu = write(tmp_path, "ubuntu", 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\n')
    bare = write(tmp_path, "bare", "PRETTY_NAME=Arch\\ Linux\n")
    broken = write(tmp_path, "broken", 'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)\n')
    assert os_pretty_name([tmp_path / "absent", ubuntu]) == "Ubuntu 22.04.4 LTS"
    assert os_pretty_name([bare]) == "Arch Linux"
    assert os_pretty_name([broken]) == "Rocky Linux 9.3 (Blue Onyx)"
    assert os_pretty_name([tmp_path / "absent"]) != ""


def test_cpu_model(tmp_path: Path) -> None:
    cpuinfo = write(
        tmp_path,
        "cpuinfo",
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7543  32-Core Processor\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7543  32-Core Processor\n",
    )
    assert cpu_model(cpuinfo) == "AMD EPYC 7543 32-Core Processor"
    arm = write(tmp_path, "arm", "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")
    assert len(cpu_model(arm)) <= 128  # platform.processor(), maybe ""


def test_disk_of_a_data_path_not_made_yet(tmp_path: Path) -> None:
    total, free = disk_gb(tmp_path / "not" / "yet")
    usage = shutil.disk_usage(tmp_path)
    assert (total, free) == (usage.total // 10**9, usage.free // 10**9)


# -- discover() on this very machine ----------------------------------------------------------------------


def test_discover_this_machine(tmp_path: Path) -> None:
    facts = discover(None, tmp_path)
    assert facts.hostname == socket.gethostname()
    assert facts.total_memory_mb > 0
    assert facts.cpu_cores > 0 and facts.cpu_threads >= facts.cpu_cores
    assert facts.total_disk_gb >= facts.available_disk_gb >= 0
    assert facts.os and facts.kernel_ver and facts.architecture
    if discovery.default_route_interface() is not None:
        assert facts.public_ip is not None
    has_nvidia = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists()
    if not has_nvidia:
        assert facts.gpus.devices == ()
        assert facts.gpus.warning is not None and facts.gpus.warning.startswith("no NVIDIA GPU found")
        assert facts.gpus.driver_mismatch is False
    facts = facts if facts.public_ip else dataclasses.replace(facts, public_ip="192.0.2.1")
    registration = parse_registration(registration_json(facts), allow_private_ips=True)
    assert registration.spec.hostname == facts.hostname
    assert registration.spec.total_gpus == len(facts.gpus.devices)


def test_discover_takes_the_public_ip_setting(tmp_path: Path) -> None:
    probe: Callable[[], GpuReport] = lambda: GpuReport((), "none", "no NVIDIA GPU found: test", False)  # noqa: E731
    facts = discover("203.0.113.50", tmp_path, probe=probe)
    assert facts.public_ip == "203.0.113.50"
    assert facts.gpus.warning == "no NVIDIA GPU found: test"

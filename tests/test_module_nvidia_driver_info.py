"""``worldland.provider.nvidia_driver_info`` through real ``ansible`` on this machine, over a fake sysfs tree
and an ``nvidia-smi`` on PATH that answers as the real one does (``--query-gpu=driver_version``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / ".venv" / "bin" / "ansible"


def pci_tree(root: Path, devices: dict[str, tuple[str, str]]) -> Path:
    for address, (vendor, pci_class) in devices.items():
        d = root / address
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(pci_class + "\n")
        (d / "device").write_text("0x2684\n")
    return root


def fake_smi(bin_dir: Path, versions: list[str] | None) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    if versions is None:
        script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    else:
        lines = "\\n".join(versions)
        script.write_text(
            f'#!/bin/sh\n[ "$1" = --query-gpu=driver_version ] || exit 2\nprintf "{lines}\\n"\n'
        )
    script.chmod(0o755)


def info(tmp: Path, **args: str) -> dict:
    env = {
        **os.environ,
        "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    }
    argv = [str(ANSIBLE), "localhost", "-c", "local", "-m", "worldland.provider.nvidia_driver_info",
            "-a", json.dumps(args), "-o"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    return json.loads(proc.stdout.split("=>", 1)[1])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    gpus = {f"0000:{b:02x}:00.0": ("0x10de", "0x030200") for b in (0x17, 0x65)}
    others = {
        "0000:00:00.0": ("0x8086", "0x060000"),  # a host bridge
        "0000:b3:00.0": ("0x10de", "0x040300"),  # an NVIDIA audio function: not a GPU
    }
    pci_tree(tmp_path / "pci", {**gpus, **others})
    (tmp_path / "module-version").write_text("550.127.05\n")
    return tmp_path


def test_gpus_are_found_by_vendor_and_class_and_the_branch_answers(tree: Path) -> None:
    fake_smi(tree / "bin", ["550.127.05", "550.127.05"])
    got = info(
        tree,
        branch="550",
        pci_devices_dir=str(tree / "pci"),
        module_version_file=str(tree / "module-version"),
    )
    assert [g["address"] for g in got["pci_gpus"]] == ["0000:17:00.0", "0000:65:00.0"]
    assert got["gpu_count"] == 2 and got["smi_gpu_count"] == 2
    assert got["branch_answers"] is True and got["problems"] == []
    assert got["changed"] is False


def test_another_branch_or_a_missing_gpu_is_a_problem(tree: Path) -> None:
    fake_smi(tree / "bin", ["535.183.01"])
    got = info(
        tree,
        branch="550",
        pci_devices_dir=str(tree / "pci"),
        module_version_file=str(tree / "module-version"),
    )
    assert got["branch_answers"] is False
    assert any("lists 1 GPU(s), the PCI scan found 2" in p for p in got["problems"])
    assert any("not branch 550" in p for p in got["problems"])


def test_no_driver_means_nothing_answers(tree: Path) -> None:
    fake_smi(tree / "bin", None)
    got = info(
        tree, branch="550", pci_devices_dir=str(tree / "pci"), module_version_file=str(tree / "absent")
    )
    assert got["smi_driver_version"] == "" and got["smi_gpu_count"] == 0 and got["module_version"] == ""
    assert got["branch_answers"] is False and got["gpu_count"] == 2


def test_secure_boot_is_read_from_efivars(tree: Path) -> None:
    fake_smi(tree / "bin", None)
    efivars = tree / "efivars"
    efivars.mkdir()
    var = efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
    var.write_bytes(b"\x06\x00\x00\x00\x01")
    got = info(tree, branch="550", pci_devices_dir=str(tree / "pci"), efivars_dir=str(efivars))
    assert got["secure_boot"] is True and got["module_signed"] is False
    var.write_bytes(b"\x06\x00\x00\x00\x00")
    assert (
        info(tree, branch="550", pci_devices_dir=str(tree / "pci"), efivars_dir=str(efivars))["secure_boot"]
        is False
    )

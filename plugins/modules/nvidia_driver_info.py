#!/usr/bin/python
"""The ``worldland.provider.nvidia_driver_info`` module: what a host's NVIDIA driver state is, read only."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_driver_info
author: WorldLand provider onboarding
version_added: "0.1.0"
short_description: Read a host's NVIDIA GPUs, driver, kernel module and Secure Boot state
description:
  - Counts NVIDIA GPUs by PCI vendor id C(0x10de) and display-controller class (C(0x03xx)) in sysfs, never by
    a name, so a GPU is found before any driver is installed.
  - Asks C(nvidia-smi) which driver answers and how many GPUs it lists, reads the loaded kernel module's
    version and the installed driver packages' versions (C(dpkg-query)), and the UEFI Secure Boot state.
  - Says whether the wanted driver branch already answers, and whether the state is consistent
    (C(problems) lists what is not), so that the role decides and verifies from one reading.
  - Changes nothing.
options:
  branch:
    description: The wanted driver branch, for example V(550).
    type: str
    required: true
  packages:
    description: The driver packages whose installed versions to report.
    type: list
    elements: str
    default: []
  pci_devices_dir:
    description: The sysfs directory of PCI devices.
    type: path
    default: /sys/bus/pci/devices
  module_version_file:
    description: The loaded C(nvidia) kernel module's version file.
    type: path
    default: /sys/module/nvidia/version
  efivars_dir:
    description: The UEFI variables directory (Secure Boot state).
    type: path
    default: /sys/firmware/efi/efivars
  module_signature_file:
    description: The loaded module's signer (present when the module is signed).
    type: path
    default: /sys/module/nvidia/signer
  nvidia_smi:
    description: The C(nvidia-smi) command.
    type: str
    default: nvidia-smi
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
"""

EXAMPLES = r"""
- name: Read the NVIDIA driver state
  worldland.provider.nvidia_driver_info:
    branch: "550"
    packages: [nvidia-driver-550-server]
  register: nvidia
"""

RETURN = r"""
pci_gpus:
  description: The NVIDIA GPUs on the PCI bus (address, device id, class).
  type: list
  elements: dict
  returned: always
gpu_count:
  description: How many NVIDIA GPUs the PCI scan found.
  type: int
  returned: always
smi_driver_version:
  description: The driver version C(nvidia-smi) reports; empty when it does not answer.
  type: str
  returned: always
smi_gpu_count:
  description: How many GPUs C(nvidia-smi) lists (0 when it does not answer).
  type: int
  returned: always
module_version:
  description: The loaded kernel module's version; empty when none is loaded.
  type: str
  returned: always
package_versions:
  description: Installed version of each of O(packages) (empty string when not installed).
  type: dict
  returned: always
package_upstream_versions:
  description: The upstream part of each installed version (before the Debian revision).
  type: dict
  returned: always
branch_answers:
  description: Whether the driver answering C(nvidia-smi) is of O(branch) and lists every GPU found.
  type: bool
  returned: always
secure_boot:
  description: Whether UEFI Secure Boot is on (false on BIOS machines or when unknown).
  type: bool
  returned: always
module_signed:
  description: Whether the loaded module carries a signature (its signer file is present).
  type: bool
  returned: always
problems:
  description: What is inconsistent (GPU counts or module and package versions differ), for verifying.
  type: list
  elements: str
  returned: always
"""

import os  # noqa: E402 - DOCUMENTATION first, as Ansible modules do
import subprocess  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASS_PREFIX = "0x03"  # PCI base class 03: display controllers (VGA 0300, 3D 0302)
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def pci_gpus(devices_dir: str) -> list[dict[str, str]]:
    found = []
    try:
        entries = sorted(os.listdir(devices_dir))
    except OSError:
        return []
    for address in entries:
        base = os.path.join(devices_dir, address)
        vendor = _read(os.path.join(base, "vendor")).lower()
        pci_class = _read(os.path.join(base, "class")).lower()
        if vendor == NVIDIA_VENDOR and pci_class.startswith(DISPLAY_CLASS_PREFIX):
            found.append(
                {"address": address, "device": _read(os.path.join(base, "device")), "class": pci_class}
            )
    return found


def secure_boot_on(efivars_dir: str) -> bool:
    try:
        with open(os.path.join(efivars_dir, SECURE_BOOT_VAR), "rb") as f:
            data = f.read()
    except OSError:
        return False
    return len(data) >= 5 and data[4] == 1  # 4 bytes of attributes, then the value


def smi_reading(module: AnsibleModule, command: str) -> tuple[str, int]:
    path = module.get_bin_path(command)
    if path is None:
        return "", 0
    try:
        proc = subprocess.run(
            [path, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", 0
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return "", 0
    return lines[0], len(lines)


def package_versions(module: AnsibleModule, packages: list[str]) -> dict[str, str]:
    versions = {}
    dpkg_query = module.get_bin_path("dpkg-query")
    for name in packages:
        version = ""
        if dpkg_query is not None:
            proc = subprocess.run(
                [dpkg_query, "-W", "-f", "${db:Status-Abbrev} ${Version}", name],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            status, _, found = proc.stdout.partition(" ")
            if proc.returncode == 0 and status.startswith("ii"):
                version = found.strip()
        versions[name] = version
    return versions


def upstream_version(version: str) -> str:
    """``550.127.05-0ubuntu1`` -> ``550.127.05``: no epoch, no Debian revision."""
    version = version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def reading(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    branch = params["branch"]
    gpus = pci_gpus(params["pci_devices_dir"])
    smi_version, smi_count = smi_reading(module, params["nvidia_smi"])
    module_version = _read(params["module_version_file"])
    packages = package_versions(module, params["packages"])
    upstream = {name: upstream_version(v) if v else "" for name, v in packages.items()}
    problems = []
    if smi_count != len(gpus):
        problems.append(f"nvidia-smi lists {smi_count} GPU(s), the PCI scan found {len(gpus)}")
    for name, version in upstream.items():
        if version and module_version != version:
            problems.append(
                f"the loaded nvidia module is {module_version or 'not loaded'}, package {name} is {version}"
            )
    if smi_version and not smi_version.startswith(f"{branch}."):
        problems.append(f"nvidia-smi answers with driver {smi_version}, not branch {branch}")
    return {
        "pci_gpus": gpus,
        "gpu_count": len(gpus),
        "smi_driver_version": smi_version,
        "smi_gpu_count": smi_count,
        "module_version": module_version,
        "package_versions": packages,
        "package_upstream_versions": upstream,
        "branch_answers": bool(gpus) and smi_version.startswith(f"{branch}.") and smi_count == len(gpus),
        "secure_boot": secure_boot_on(params["efivars_dir"]),
        "module_signed": bool(_read(params["module_signature_file"])),
        "problems": problems,
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "branch": {"type": "str", "required": True},
            "packages": {"type": "list", "elements": "str", "default": []},
            "pci_devices_dir": {"type": "path", "default": "/sys/bus/pci/devices"},
            "module_version_file": {"type": "path", "default": "/sys/module/nvidia/version"},
            "efivars_dir": {"type": "path", "default": "/sys/firmware/efi/efivars"},
            "module_signature_file": {"type": "path", "default": "/sys/module/nvidia/signer"},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **reading(module))


if __name__ == "__main__":
    main()

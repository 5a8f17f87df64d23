"""Debian's packages as the tests use them without installing them: ``apt-get download`` into a cache
outside the repo, then ``dpkg -x`` (no maintainer scripts, no service). etcd (``testkit/realkube.py``),
Prometheus (``testkit/prometheus.py``) and the lab's apt repository (``tests/lab/aptrepo.py``) come this
way; ``scripts/install-system-deps.sh`` does the same in shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DebianPackageError(RuntimeError):
    """A package could not be fetched or unpacked; the message says which step and why."""


def run_tool(
    command: Sequence[str],
    what: str,
    *,
    error: type[Exception] = DebianPackageError,
    timeout: float = 300,
    **kwargs: Any,
) -> str:
    """``command``'s stdout; a failure to start, a timeout or a non-zero exit raises ``error("<what>…")``
    with the end of what it printed."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise error(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def apt_download(
    names: Sequence[str], directory: Path, *, error: type[Exception] = DebianPackageError
) -> None:
    """``apt-get download names`` into ``directory``; as root, once more after ``apt-get update`` (a fresh
    image may have no package lists yet)."""
    command = ["apt-get", "download", "-q", *names]
    if os.geteuid() == 0:  # as root apt hands downloads to its _apt user, which cannot write our cache
        command[1:1] = ["-o", "APT::Sandbox::User=root"]
    try:
        run_tool(command, "apt-get download", error=error, cwd=directory)
    except error:
        if os.geteuid() != 0:
            raise
        run_tool(["apt-get", "update", "-qq"], "apt-get update", error=error)
        run_tool(command, "apt-get download", error=error, cwd=directory)


def unpack_package(package: str, directory: Path, *, error: type[Exception] = DebianPackageError) -> Path:
    """``<directory>/root``: the newest ``<package>_*.deb`` in ``directory`` (downloaded first when there is
    none) unpacked with ``dpkg -x``, replacing an earlier unpacking. The caller holds the directory's lock."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise error(f"no {tool} here to fetch Debian's {package} package")
    debs = sorted(directory.glob(f"{package}_*.deb"))
    if not debs:
        apt_download([package], directory, error=error)
        debs = sorted(directory.glob(f"{package}_*.deb"))
    if not debs:
        raise error(f"apt-get download {package} left no .deb in {directory}")
    root = directory / "root"
    unpacking = Path(tempfile.mkdtemp(prefix=".root.", dir=directory))
    try:
        run_tool(["dpkg", "-x", str(debs[-1]), str(unpacking)], f"dpkg -x {debs[-1].name}", error=error)
        shutil.rmtree(root, ignore_errors=True)
        unpacking.rename(root)
    finally:
        shutil.rmtree(unpacking, ignore_errors=True)
    return root

"""pytest fixtures for the Kubernetes API test server (imported by ``tests/conftest.py``).

- ``kube_server``: one ``KubeApiServer`` per test session (per xdist worker), on 127.0.0.1.
- ``kube_api``: per test, a ``KubeApi`` handle: the kubeconfig path, the server, the write requests
  sent during this test, unique names, and a ``kubectl`` runner. The server is shared, so tests use
  unique names (``kube_api.unique("node")``) instead of resetting it: a session-wide lab may hold
  state there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.kube_server.server import KubeApiServer, WriteRecord


@dataclass
class KubeApi:
    server: KubeApiServer
    kubeconfig: Path
    start_seq: int
    cache_dir: Path
    names: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def unique(self, prefix: str = "wl") -> str:
        """A name no other test uses (lowercase, a valid node or Secret name)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def writes(self) -> list[WriteRecord]:
        """Write requests the server received since this test started."""
        return self.server.writes_after(self.start_seq)

    def write_counts(self) -> Counter[str]:
        return Counter(w.resource for w in self.writes())

    def kubectl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        binary = shutil.which("kubectl")
        if binary is None:
            pytest.skip("kubectl is not installed")
        env = {**os.environ, "HOME": str(self.cache_dir)}
        env.pop("KUBECONFIG", None)
        result = subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir / "c"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    with KubeApiServer(workdir=tmp_path_factory.mktemp("kube-api")) as server:
        yield server


@pytest.fixture
def kube_api(kube_server: KubeApiServer, tmp_path_factory: pytest.TempPathFactory) -> KubeApi:
    return KubeApi(
        server=kube_server,
        kubeconfig=kube_server.kubeconfig_path,
        start_seq=kube_server.write_seq,
        cache_dir=tmp_path_factory.getbasetemp() / "kubectl-home",
    )

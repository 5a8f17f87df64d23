"""A local Kubernetes API server for tests, benchmarks and the demo (see ``server.py``); its pytest fixtures
are in ``fixtures.py`` (imported by ``tests/conftest.py``)."""

from testkit.kube_server.server import RESOURCES, ApiError, Identity, KubeApiServer, WriteRecord, detached_jws

__all__ = ["RESOURCES", "ApiError", "Identity", "KubeApiServer", "WriteRecord", "detached_jws"]

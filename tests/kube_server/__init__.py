"""A local Kubernetes API server for tests and the demo (see ``server.py``), and its pytest fixtures."""

from tests.kube_server.server import RESOURCES, ApiError, Identity, KubeApiServer, WriteRecord, detached_jws

__all__ = ["RESOURCES", "ApiError", "Identity", "KubeApiServer", "WriteRecord", "detached_jws"]

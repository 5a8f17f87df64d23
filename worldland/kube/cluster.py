"""The cluster's CA hash and API endpoint: what ``kubeadm join`` needs besides the token.

Holds ``ca_cert_hash_from_pem``, ``ApiEndpoint``, ``JoinInfo``, ``parse_endpoint``,
``endpoint_from_url`` and ``ClusterInfo`` (the CA hash and endpoint read from the kubeconfig this
client trusts or from ``kube-public/cluster-info``, and the configured join endpoint).

Rules kept here:

- The CA hash is ``sha256:<hex>`` of the DER SubjectPublicKeyInfo of the cluster CA's (first)
  certificate, the value ``kubeadm join --discovery-token-ca-cert-hash`` expects.
- Providers join at the configured ``join_endpoint`` when there is one, else at the server this
  client reaches.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s

from worldland.kube.session import CONFLICT_RETRIES, DEFAULT_TIMEOUT, KubeError, KubeSession

__all__ = [
    "CLUSTER_INFO_NAME",
    "CLUSTER_INFO_NAMESPACE",
    "ApiEndpoint",
    "ClusterInfo",
    "JoinInfo",
    "ca_cert_hash_from_pem",
    "endpoint_from_url",
    "parse_endpoint",
]

CLUSTER_INFO_NAMESPACE = "kube-public"
CLUSTER_INFO_NAME = "cluster-info"


# -- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class JoinInfo:
    """Besides the token, what ``kubeadm join <endpoint> --discovery-token-ca-cert-hash <hash>`` needs."""

    endpoint: ApiEndpoint
    ca_cert_hash: str


# -- pure helpers ----------------------------------------------------------------------------------------


def ca_cert_hash_from_pem(pem: bytes | str) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo of the (first) certificate in ``pem``.

    The value ``kubeadm join --discovery-token-ca-cert-hash`` expects.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError) as exc:
        raise KubeError(f"the cluster CA is not a PEM certificate: {exc}") from None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def parse_endpoint(text: str) -> ApiEndpoint:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (what ``--join-endpoint`` takes)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return ApiEndpoint(host, port)


def endpoint_from_url(url: str) -> ApiEndpoint:
    parts = urlsplit(url)
    if not parts.hostname:
        raise KubeError(f"no host in the API server URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return ApiEndpoint(parts.hostname, port)


# -- the operations --------------------------------------------------------------------------------------


class ClusterInfo(KubeSession):
    """The CA hash and API endpoint of the cluster, and where providers join it."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        conflict_retries: int = CONFLICT_RETRIES,
        join_endpoint: str | ApiEndpoint | None = None,
    ) -> None:
        join = parse_endpoint(join_endpoint) if isinstance(join_endpoint, str) else join_endpoint
        super().__init__(api_client, timeout=timeout, clock=clock, conflict_retries=conflict_retries)
        self._join_endpoint = join

    def _kubeconfig_ca_pem(self) -> bytes:
        path = self._api_client.configuration.ssl_ca_cert
        if not path:
            raise KubeError("the kubeconfig names no cluster CA; use source='cluster-info'")
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise KubeError(f"cannot read the cluster CA file: {type(exc).__name__}") from None

    def _cluster_info(self) -> tuple[bytes, ApiEndpoint]:
        obj = self._call(
            "read cluster-info",
            "get",
            "configmaps",
            self._core.read_namespaced_config_map,
            CLUSTER_INFO_NAME,
            CLUSTER_INFO_NAMESPACE,
        )
        try:
            doc = yaml.safe_load((obj.get("data") or {})["kubeconfig"])
            cluster = doc["clusters"][0]["cluster"]
            ca_pem = base64.b64decode(cluster["certificate-authority-data"])
            endpoint = endpoint_from_url(cluster["server"])
        except (KeyError, IndexError, TypeError, ValueError, yaml.YAMLError) as exc:
            raise KubeError(
                f"kube-public/cluster-info has no usable kubeconfig: {type(exc).__name__}"
            ) from None
        return ca_pem, endpoint

    def ca_cert_hash(self, source: str = "kubeconfig") -> str:
        """The ``sha256:`` CA hash for ``kubeadm join``: from the CA this client trusts (``kubeconfig``;
        the service account CA in a pod) or from ``kube-public/cluster-info`` (``cluster-info``)."""
        return self.join_info(source).ca_cert_hash

    def api_endpoint(self, source: str = "kubeconfig") -> ApiEndpoint:
        """The API server's host and port: as this client reaches it, or as cluster-info advertises it."""
        if source == "kubeconfig":
            return endpoint_from_url(self.host)
        return self.join_info(source).endpoint

    def join_endpoint(self) -> tuple[str, int]:
        """Where providers join: the configured ``join_endpoint``, else the kubeconfig's server."""
        endpoint = self._join_endpoint or endpoint_from_url(self.host)
        return endpoint.host, endpoint.port

    def join_info(self, source: str = "kubeconfig") -> JoinInfo:
        if source == "kubeconfig":
            return JoinInfo(endpoint_from_url(self.host), ca_cert_hash_from_pem(self._kubeconfig_ca_pem()))
        if source == "cluster-info":
            ca_pem, endpoint = self._cluster_info()
            return JoinInfo(endpoint, ca_cert_hash_from_pem(ca_pem))
        raise ValueError(f"source must be 'kubeconfig' or 'cluster-info', not {source!r}")

"""Joining the cluster: the join token's lifetime and form, the CA hash's form, and the one-line join
command the deployed Go agent runs (DESIGN.md, "The Kubernetes side"). Pure: no I/O.

The provider agent of this project joins with these structured values, never a shell string.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

# Bootstrap tokens live 15 to 60 minutes (not kubeadm's 24 h), 30 by default.
# The kubeconfig setting (--kubeconfig, WORLDLAND_KUBECONFIG) that means the pod's own service account.
IN_CLUSTER = "in-cluster"
DEFAULT_TOKEN_TTL_S = 30 * 60
MIN_TOKEN_TTL_S, MAX_TOKEN_TTL_S = 15 * 60, 60 * 60
TOKEN_REUSE_MARGIN_S = 5 * 60  # a token closer than this to expiry is replaced, not sent again

JOIN_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}\Z")
TOKEN_ID_RE = re.compile(r"^[a-z0-9]{6}\Z")  # a join token's public half: its Secret's name ends in it
CA_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_ENDPOINT_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_NODE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class JoinValues:
    """What ``kubeadm join`` takes, each checked against its exact format (``checked_join_values``)."""

    host: str
    port: int
    token: str = field(repr=False)
    ca_hash: str
    node_name: str | None = None

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def kubeadm_args(self) -> list[str]:
        """``kubeadm join`` as separate arguments: never a shell string, never skipping CA checks."""
        args = ["kubeadm", "join", self.endpoint, "--token", self.token]
        args += ["--discovery-token-ca-cert-hash", self.ca_hash]
        if self.node_name:
            args += ["--node-name", self.node_name]
        return args


def checked_join_values(
    host: object, port: object, token: object, ca_hash: object, node_name: object = None
) -> JoinValues:
    """The join's values if each has its exact form, else ``ValueError`` naming the field (an
    answer's field name: ``master_ip``, ``master_port``, ``join_token``, ``ca_hash``, ``node_name``)."""
    if not isinstance(host, str):
        raise ValueError("master_ip: missing")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _ENDPOINT_HOST_RE.match(host):
            raise ValueError(f"master_ip: {host!r:.80} is not an IP address or DNS name") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"master_port: {port!r:.20} is not 1-65535")
    if not isinstance(token, str) or not JOIN_TOKEN_RE.match(token):
        raise ValueError("join_token: not of the bootstrap-token form [a-z0-9]{6}.[a-z0-9]{16}")
    if not isinstance(ca_hash, str) or not CA_HASH_RE.match(ca_hash):
        raise ValueError("ca_hash: not sha256:<64 hex digits>")
    if node_name is not None and (not isinstance(node_name, str) or not _NODE_NAME_RE.match(node_name)):
        raise ValueError("node_name: not an RFC 1123 DNS label")
    return JoinValues(host, port, token, ca_hash, node_name)


def join_command(host: str, port: int, token: str, ca_hash: str) -> str:
    """The one-line form the deployed agent runs with ``sudo sh -c``.

    Built only from values this project produced, each checked against its exact format, so no provider
    text and no shell metacharacter can ever reach it. This project's agent never runs it: it joins
    with ``JoinValues.kubeadm_args``.
    """
    values = checked_join_values(host, port, token, ca_hash)
    return f"kubeadm join {values.endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash}"

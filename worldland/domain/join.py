"""Joining the cluster: the join token's lifetime and form, the CA hash's form, and the one-line join
command the deployed Go agent runs (DESIGN.md, "The Kubernetes side"). Pure: no I/O.

The provider agent of this project joins with these structured values, never a shell string.
"""

from __future__ import annotations

import ipaddress
import re

# Bootstrap tokens live 15 to 60 minutes (not kubeadm's 24 h), 30 by default.
DEFAULT_TOKEN_TTL_S = 30 * 60
MIN_TOKEN_TTL_S, MAX_TOKEN_TTL_S = 15 * 60, 60 * 60
TOKEN_REUSE_MARGIN_S = 5 * 60  # a token closer than this to expiry is replaced, not sent again

JOIN_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}\Z")
CA_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_ENDPOINT_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


def join_command(host: str, port: int, token: str, ca_hash: str) -> str:
    """The one-line form the deployed agent runs with ``sudo sh -c``.

    Built only from values this project produced, each checked against its exact format here, so no
    provider text and no shell metacharacter can ever reach it. The agent side of this project never
    runs it (it joins with structured arguments).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _ENDPOINT_HOST_RE.match(host):
            raise ValueError(f"join endpoint host {host!r:.80} is not an IP address or DNS name") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"join endpoint port {port!r:.20} is not 1-65535")
    if not JOIN_TOKEN_RE.match(token):
        raise ValueError("join token is not of the bootstrap-token form [a-z0-9]{6}.[a-z0-9]{16}")
    if not CA_HASH_RE.match(ca_hash):
        raise ValueError("CA hash is not sha256:<64 hex digits>")
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"kubeadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash}"

"""The one adapter to Kubernetes: join tokens, the CA hash, node state, node labels and taints.

Written against the official ``kubernetes`` client only (``CoreV1Api``). Everything else in
``worldland/`` that needs the cluster goes through ``KubeClient``; nothing else imports
``kubernetes``.

Rules kept here:

- Bootstrap tokens are ``kube-system/bootstrap-token-<id>`` Secrets exactly as kubeadm makes
  them, with a short expiry (15 to 60 minutes, default 30). The secret half never appears in a
  repr, a log line or an exception message.
- Writes happen only on change: ``apply_labels`` compares with the node's current labels and
  sends nothing when they already match; ``ensure_taint`` reads, changes the taint list, and
  writes with the node's ``resourceVersion`` as a precondition (other controllers write taints
  too), retrying on 409.
- Every failure surfaces as ``KubeError`` (``KubeUnavailable`` when the API cannot be reached or
  answers 5xx/429, ``KubeNotFound``, ``KubeConflict``), with a message built from the status code
  and the API's own ``Status.message``, scrubbed of credentials, and with no chained client
  exception (whose text carries headers and bodies).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from worldland.names import (
    LABEL_GPU_MODEL,
    LABEL_PROVIDER_ID,
    LABEL_RENTAL_STATUS,
    LABEL_RENTAL_TYPE,
    RENTAL_TYPE_GPU,
    is_label_value,
    label_value,
    node_labels,
)

__all__ = [
    "LABEL_GPU_MODEL",
    "LABEL_PROVIDER_ID",
    "LABEL_RENTAL_STATUS",
    "LABEL_RENTAL_TYPE",
    "RENTAL_TYPE_GPU",
    "ApiEndpoint",
    "BootstrapToken",
    "BootstrapTokenInfo",
    "JoinInfo",
    "KubeClient",
    "KubeConflict",
    "KubeError",
    "KubeNotFound",
    "KubeUnavailable",
    "NodeState",
    "Taint",
    "ca_cert_hash_from_pem",
    "new_bootstrap_token",
    "node_labels",
]

# -- constants -------------------------------------------------------------------------------------------

KUBECONFIG_ENV = "WORLDLAND_KUBECONFIG"

TOKEN_NAMESPACE = "kube-system"  # noqa: S105 (a name, not a secret)
TOKEN_SECRET_PREFIX = "bootstrap-token-"  # noqa: S105 (a name, not a secret)
TOKEN_SECRET_TYPE = "bootstrap.kubernetes.io/token"  # noqa: S105 (a name, not a secret)
NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"  # noqa: S105 (a name, not a secret)
DEFAULT_TOKEN_TTL = 1800
MIN_TOKEN_TTL = 900
MAX_TOKEN_TTL = 3600
TOKEN_ID_ATTEMPTS = 5
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # noqa: S105 (kubeadm's alphabet: [a-z0-9])
TOKEN_RE = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
# A token's secret half on its own: any standalone 16-character [a-z0-9] word. Scrubbed from error
# text too; the price is that such a word in an object name or message reads <redacted> there.
TOKEN_SECRET_RE = re.compile(r"(?<![A-Za-z0-9])[a-z0-9]{16}(?![A-Za-z0-9])")

CLUSTER_INFO_NAMESPACE = "kube-public"
CLUSTER_INFO_NAME = "cluster-info"

GPU_RESOURCE = "nvidia.com/gpu"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "worldland"
OFFLINE_TAINT_KEY = "worldland.io/offline"
TAINT_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds per request
CONFLICT_RETRIES = 5
NAME_LOOKUP_THRESHOLD = 16  # node_states(): up to this many names are fetched one by one, else listed
LIST_PAGE_SIZE = 500

_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# -- errors ------------------------------------------------------------------------------------------------


class KubeError(Exception):
    """A Kubernetes API call failed. ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeUnavailable(KubeError):
    """The API could not be reached, timed out, or answered 5xx/429: worth retrying later."""


class KubeNotFound(KubeError):
    """The object does not exist (404)."""


class KubeConflict(KubeError):
    """409 that retries did not resolve (an object changed under us too often, or a name is taken)."""


# -- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapToken:
    """A join token. ``repr``/``str`` show the id and expiry only; ``token`` is the full secret."""

    token_id: str
    secret: str = field(repr=False)
    expires_at: datetime

    @property
    def token(self) -> str:
        """``<id>.<secret>``, for ``kubeadm join --token``; keep it out of logs."""
        return f"{self.token_id}.{self.secret}"

    @property
    def secret_name(self) -> str:
        return TOKEN_SECRET_PREFIX + self.token_id

    def __str__(self) -> str:
        return f"bootstrap token {self.token_id} (expires {rfc3339(self.expires_at)})"


@dataclass(frozen=True)
class BootstrapTokenInfo:
    """A token as listed: never its secret."""

    token_id: str
    expires_at: datetime | None
    provider_label: str | None
    description: str


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


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def as_dict(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class NodeState:
    """What the project reads of a Node. ``exists`` False means there is no such node (all else empty)."""

    name: str
    exists: bool
    ready: bool = False
    gpu_allocatable: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    resource_version: str | None = None

    @property
    def gpus(self) -> int:
        """Allocatable ``nvidia.com/gpu`` (the name ``worldland.onboarding`` reads)."""
        return self.gpu_allocatable

    @property
    def schedulable_gpus(self) -> bool:
        """Ready with allocatable ``nvidia.com/gpu`` > 0: the condition for Joined -> Available."""
        return self.exists and self.ready and self.gpu_allocatable > 0


# -- pure helpers ----------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


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


def is_label_key(key: str) -> bool:
    """A valid label (or taint) key: ``[prefix/]name``, prefix a DNS subdomain <= 253, name <= 63."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))


def label_selector(labels: Mapping[str, str] | str | None) -> str | None:
    """``{"a": "b", "c": "d"}`` -> ``"a=b,c=d"``; a string passes through (Kubernetes' syntax)."""
    if labels is None or isinstance(labels, str):
        return labels or None
    for key, value in labels.items():
        _check_label(key, value)
    return ",".join(f"{k}={v}" for k, v in labels.items()) or None


def _check_label(key: str, value: str | None) -> None:
    if not is_label_key(key):
        raise ValueError(f"not a valid label key: {key!r}")
    if value is not None and not (isinstance(value, str) and is_label_value(value)):
        raise ValueError(f"not a valid label value for {key}: {value!r} (use worldland.names.label_value)")


def new_bootstrap_token() -> tuple[str, str]:
    """A fresh ``(token_id, token_secret)`` pair in kubeadm's form (``[a-z0-9]{6}``, ``[a-z0-9]{16}``)."""
    token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(6))
    token_secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(16))
    return token_id, token_secret


_new_token_id_secret = new_bootstrap_token  # what create_bootstrap_token draws from (tests replace it)


def _quantity_int(text: Any) -> int:
    """An extended-resource quantity ("4", "4k"...) as a whole number; 0 when absent or malformed."""
    if text is None:
        return 0
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kMGTPE]i?|m)?\s*", str(text))
    if not match:
        return 0
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return 0
    suffix = match.group(2) or ""
    scale = {
        "": 1,
        "m": Decimal("0.001"),
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "P": 10**15,
        "E": 10**18,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
    }[suffix]
    return int(number * scale)


def node_state_from_object(obj: Mapping[str, Any]) -> NodeState:
    """A ``NodeState`` from a Node as the API serves it (JSON)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    taints = tuple(
        Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", ""))
        for t in spec.get("taints") or []
    )
    return NodeState(
        name=meta.get("name", ""),
        exists=True,
        ready=ready,
        gpu_allocatable=_quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE)),
        labels=dict(meta.get("labels") or {}),
        taints=taints,
        unschedulable=bool(spec.get("unschedulable")),
        resource_version=meta.get("resourceVersion"),
    )


# -- the client ------------------------------------------------------------------------------------------


class KubeClient:
    """The project's Kubernetes operations over one ``kubernetes.client.ApiClient``. Thread-safe.

    Build it with ``KubeClient.connect()`` (explicit kubeconfig, ``$WORLDLAND_KUBECONFIG``,
    ``$KUBECONFIG`` or ``~/.kube/config``, else in-cluster), ``from_kubeconfig(path)`` or
    ``in_cluster()``. ``writes`` counts the write requests this client sent, by ``"VERB resource"``.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        conflict_retries: int = CONFLICT_RETRIES,
        join_endpoint: str | ApiEndpoint | None = None,
    ) -> None:
        self._join_endpoint = (
            parse_endpoint(join_endpoint) if isinstance(join_endpoint, str) else join_endpoint
        )
        self._api_client = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._timeout = timeout
        self._clock = clock
        self._conflict_retries = conflict_retries
        self._lock = threading.Lock()
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str], *, context: str | None = None, **kwargs: Any
    ) -> KubeClient:
        try:
            api_client = k8s_config.new_client_from_config(
                config_file=str(path), context=context, persist_config=False
            )
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise KubeError(f"cannot load kubeconfig {str(path)!r}: {type(exc).__name__}") from None
        return cls(api_client, **kwargs)

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> KubeClient:
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubeError(f"not running in a cluster: {exc}") from None
        return cls(k8s.ApiClient(configuration), **kwargs)

    @classmethod
    def connect(cls, kubeconfig: str | os.PathLike[str] | None = None, **kwargs: Any) -> KubeClient:
        """Explicit kubeconfig, else ``$WORLDLAND_KUBECONFIG``, ``$KUBECONFIG`` (first entry),
        ``~/.kube/config`` when present, else the in-cluster service account."""
        candidates = [kubeconfig, os.environ.get(KUBECONFIG_ENV)]
        kube_env = os.environ.get("KUBECONFIG")
        if kube_env:
            candidates.append(kube_env.split(os.pathsep)[0])
        for candidate in candidates:
            if candidate:
                return cls.from_kubeconfig(candidate, **kwargs)
        default = Path.home() / ".kube" / "config"
        if default.is_file():
            return cls.from_kubeconfig(default, **kwargs)
        return cls.in_cluster(**kwargs)

    def close(self) -> None:
        self._api_client.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KubeClient({self._api_client.configuration.host!r})"

    @property
    def host(self) -> str:
        return self._api_client.configuration.host

    # -- request plumbing --------------------------------------------------------------------------------

    def _credentials(self) -> list[str]:
        found = []
        configuration = self._api_client.configuration
        for value in (configuration.api_key or {}).values():
            if isinstance(value, str) and value:
                found.append(value)
                scheme, _, rest = value.partition(" ")
                if rest and scheme.lower() == "bearer":
                    found.append(rest)
        for attr in ("password", "access_token"):
            value = getattr(configuration, attr, None)
            if isinstance(value, str) and value:
                found.append(value)
        return found

    def _redact(self, text: str, extra: Iterable[str] = ()) -> str:
        for secret in sorted({*self._credentials(), *extra}, key=len, reverse=True):
            if len(secret) >= 6:
                text = text.replace(secret, "<redacted>")
        text = TOKEN_RE.sub("<redacted-token>", text)
        text = TOKEN_SECRET_RE.sub("<redacted>", text)
        return re.sub(r"(?i)(bearer|basic)\s+\S+", r"\1 <redacted>", text)

    def _error(self, action: str, exc: BaseException, secrets_in_play: Iterable[str]) -> KubeError:
        if isinstance(exc, ApiException):
            status = exc.status
            message = ""
            reason = exc.reason
            try:
                body = json.loads(exc.body or "")
                if isinstance(body, dict):
                    message = str(body.get("message") or "")
                    reason = body.get("reason") or reason
            except (ValueError, TypeError):
                pass
            text = f"{action}: HTTP {status} {reason or ''}".rstrip()
            if message:
                text += f": {message[:500]}"
            text = self._redact(text, secrets_in_play)
            if status == 404:
                return KubeNotFound(text, status=status, reason=reason)
            if status == 409:
                return KubeConflict(text, status=status, reason=reason)
            if status is None or status == 0 or status == 429 or status >= 500:
                return KubeUnavailable(text, status=status, reason=reason)
            return KubeError(text, status=status, reason=reason)
        detail = type(exc).__name__
        reason_obj = getattr(exc, "reason", None)
        if reason_obj is not None:
            detail += f" ({type(reason_obj).__name__}: {str(reason_obj)[:200]})"
        elif str(exc):
            detail += f" ({str(exc)[:200]})"
        text = self._redact(f"{action}: Kubernetes API unreachable at {self.host}: {detail}", secrets_in_play)
        return KubeUnavailable(text)

    def _call(
        self,
        action: str,
        verb: str,
        resource: str,
        method: Callable[..., Any],
        *args: Any,
        secrets_in_play: Iterable[str] = (),
        **kwargs: Any,
    ) -> Any:
        """Run one API call, return its JSON body; errors become ``KubeError`` with no chained cause."""
        error: KubeError | None = None
        with self._lock:
            (self.writes if verb in ("create", "patch", "update", "delete") else self.reads)[
                f"{verb} {resource}"
            ] += 1
        try:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = self._error(action, exc, secrets_in_play)
        else:
            try:
                return json.loads(data) if data else None
            except ValueError:
                error = KubeError(f"{action}: the API answered with something that is not JSON")
        # Raised outside the except block: no __context__ holding the client's exception text.
        raise error

    # -- bootstrap tokens ----------------------------------------------------------------------------------

    def _token_body(
        self,
        token_id: str,
        token_secret: str,
        expires: datetime,
        description: str,
        provider_id: str | None,
        groups,
    ) -> dict[str, Any]:
        labels = {LABEL_MANAGED_BY: MANAGED_BY}
        if provider_id is not None:
            labels[LABEL_PROVIDER_ID] = label_value(provider_id)
        string_data = {
            "description": description,
            "token-id": token_id,
            "token-secret": token_secret,
            "expiration": rfc3339(expires),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
        }
        if groups:
            string_data["auth-extra-groups"] = ",".join(groups)
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": TOKEN_SECRET_PREFIX + token_id,
                "namespace": TOKEN_NAMESPACE,
                "labels": labels,
            },
            "type": TOKEN_SECRET_TYPE,
            "stringData": string_data,
        }

    @staticmethod
    def _token_args(
        token_id: str, token_secret: str, description: str | None, provider_id: str | None, extra_groups
    ) -> tuple[str, list[str]]:
        if not re.fullmatch(r"[a-z0-9]{6}", token_id) or not re.fullmatch(r"[a-z0-9]{16}", token_secret):
            raise ValueError("a bootstrap token is [a-z0-9]{6}.[a-z0-9]{16}")
        groups = list(extra_groups)
        for group in groups:
            if not group.startswith("system:bootstrappers:") or "," in group:
                raise ValueError(
                    f"bootstrap token groups must start with system:bootstrappers:, not {group!r}"
                )
        if description is None:
            description = "WorldLand join token"
            if provider_id is not None:
                description += f" for provider {label_value(provider_id)}"
        # Free text, but keep it one short printable line.
        description = "".join(ch if ch.isprintable() else " " for ch in description)[:200]
        return description, groups

    def _create_token_secret(self, body: dict[str, Any], token_secret: str) -> None:
        encoded = base64.b64encode(token_secret.encode()).decode()
        self._call(
            "create bootstrap token",
            "create",
            "secrets",
            self._core.create_namespaced_secret,
            TOKEN_NAMESPACE,
            body,
            secrets_in_play=(token_secret, encoded),
        )

    def create_bootstrap_token(
        self,
        *,
        ttl_seconds: int = DEFAULT_TOKEN_TTL,
        description: str | None = None,
        provider_id: str | None = None,
        extra_groups: Iterable[str] = (NODE_TOKEN_GROUP,),
    ) -> BootstrapToken:
        """Create a ``kubeadm join`` token valid for ``ttl_seconds`` (900 to 3600).

        ``provider_id`` (hostile text) only becomes a label value through ``names.label_value``.
        A taken token id (409) is retried with a fresh one.
        """
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
            raise TypeError("ttl_seconds must be an int")
        if not MIN_TOKEN_TTL <= ttl_seconds <= MAX_TOKEN_TTL:
            raise ValueError(f"ttl_seconds must be {MIN_TOKEN_TTL} to {MAX_TOKEN_TTL}, not {ttl_seconds}")
        last: KubeError | None = None
        for _ in range(TOKEN_ID_ATTEMPTS):
            token_id, token_secret = _new_token_id_secret()
            text, groups = self._token_args(token_id, token_secret, description, provider_id, extra_groups)
            expires = datetime.fromtimestamp(int(self._clock()) + ttl_seconds, UTC)
            body = self._token_body(token_id, token_secret, expires, text, provider_id, groups)
            try:
                self._create_token_secret(body, token_secret)
            except KubeConflict as exc:
                last = exc  # the id is taken: try another
                continue
            return BootstrapToken(token_id, token_secret, expires)
        assert last is not None
        raise last

    def ensure_bootstrap_token(
        self,
        token_id: str,
        secret: str,
        expires_at: float,
        description: str | None = None,
        *,
        provider_id: str | None = None,
        extra_groups: Iterable[str] = (NODE_TOKEN_GROUP,),
    ) -> None:
        """Create the token ``token_id.secret`` expiring at ``expires_at`` (epoch seconds, at most an hour
        ahead), under an id the caller chose and recorded first. Idempotent: when the Secret exists
        with this very secret (a retry after a crash) nothing happens; another secret under the
        id raises ``KubeConflict``."""
        text, groups = self._token_args(token_id, secret, description, provider_id, extra_groups)
        ahead = expires_at - self._clock()
        if not 0 < ahead <= MAX_TOKEN_TTL + 60:
            raise ValueError(f"a join token expires within {MAX_TOKEN_TTL} s from now, not in {ahead:.0f} s")
        expires = datetime.fromtimestamp(int(expires_at), UTC)
        body = self._token_body(token_id, secret, expires, text, provider_id, groups)
        try:
            self._create_token_secret(body, secret)
            return
        except KubeConflict:
            pass
        existing = self._token_data(token_id)
        if existing is not None and existing.get("token-secret") == secret:
            return  # created before (a retry): the same token
        raise KubeConflict(f"bootstrap token id {token_id} is taken by another token", status=409)

    def _token_data(self, token_id: str) -> dict[str, str] | None:
        """The decoded fields of a token's Secret, or None when there is no such token Secret."""
        if not re.fullmatch(r"[a-z0-9]{6}", token_id):
            raise ValueError(f"not a bootstrap token id: {token_id!r}")
        try:
            obj = self._call(
                "read bootstrap token",
                "get",
                "secrets",
                self._core.read_namespaced_secret,
                TOKEN_SECRET_PREFIX + token_id,
                TOKEN_NAMESPACE,
            )
        except KubeNotFound:
            return None
        if obj.get("type") != TOKEN_SECRET_TYPE:
            return None
        out = {}
        for key, value in (obj.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
        return out

    def bootstrap_token_secret(self, token_id: str) -> str | None:
        """The secret half of token ``token_id`` while it exists and has not expired, else None."""
        data = self._token_data(token_id)
        if not data or data.get("token-id") != token_id:
            return None
        expiration = data.get("expiration")
        if expiration:
            try:
                if parse_rfc3339(expiration).timestamp() <= self._clock():
                    return None
            except ValueError:
                return None
        return data.get("token-secret") or None

    def delete_bootstrap_token(self, token_id: str) -> bool:
        """Delete a token's Secret; False when it was already gone."""
        if not re.fullmatch(r"[a-z0-9]{6}", token_id):
            raise ValueError(f"not a bootstrap token id: {token_id!r}")
        try:
            self._call(
                "delete bootstrap token",
                "delete",
                "secrets",
                self._core.delete_namespaced_secret,
                TOKEN_SECRET_PREFIX + token_id,
                TOKEN_NAMESPACE,
            )
        except KubeNotFound:
            return False
        return True

    def list_bootstrap_tokens(self, provider_id: str | None = None) -> list[BootstrapTokenInfo]:
        """Tokens this project created (optionally for one provider), without their secrets."""
        selector = {LABEL_MANAGED_BY: MANAGED_BY}
        if provider_id is not None:
            selector[LABEL_PROVIDER_ID] = label_value(provider_id)
        out = []
        for item in self._list(
            "list bootstrap tokens",
            "secrets",
            self._core.list_namespaced_secret,
            TOKEN_NAMESPACE,
            label_selector=label_selector(selector),
            field_selector=f"type={TOKEN_SECRET_TYPE}",
        ):
            data = item.get("data") or {}

            def field_of(key: str, data: Mapping[str, str] = data) -> str:
                try:
                    return base64.b64decode(data.get(key, "")).decode("utf-8", "replace")
                except ValueError:
                    return ""

            expiration = field_of("expiration")
            try:
                expires = parse_rfc3339(expiration) if expiration else None
            except ValueError:
                expires = None
            out.append(
                BootstrapTokenInfo(
                    token_id=field_of("token-id"),
                    expires_at=expires,
                    provider_label=(item["metadata"].get("labels") or {}).get(LABEL_PROVIDER_ID),
                    description=field_of("description"),
                )
            )
        return out

    # -- CA hash and endpoint --------------------------------------------------------------------------

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

    # -- nodes: reading ------------------------------------------------------------------------------------

    def _read_node(self, name: str) -> dict[str, Any]:
        return self._call(f"read node {name}", "get", "nodes", self._core.read_node, name)

    def node_state(self, name: str) -> NodeState:
        """The node's state; ``exists=False`` when there is no such node."""
        try:
            return node_state_from_object(self._read_node(name))
        except KubeNotFound:
            return NodeState(name=name, exists=False)

    def _list(
        self, action: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[dict]:
        token: str | None = None
        restarted = False
        while True:
            try:
                page = self._call(
                    action, "list", resource, method, *args, limit=LIST_PAGE_SIZE, _continue=token, **kwargs
                )
            except KubeError as exc:
                if exc.status == 410 and not restarted:  # continue token expired: start over once
                    token, restarted = None, True
                    continue
                raise
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def list_nodes(self, selector: Mapping[str, str] | str | None = None) -> list[NodeState]:
        """All nodes matching a label selector (a mapping of equalities, or Kubernetes' syntax), paged."""
        return [
            node_state_from_object(item)
            for item in self._list(
                "list nodes", "nodes", self._core.list_node, label_selector=label_selector(selector)
            )
        ]

    def node_states(self, names: Iterable[str]) -> dict[str, NodeState]:
        """States for many node names at once: a few GETs, or one paged list when there are many."""
        wanted = list(dict.fromkeys(names))
        if len(wanted) <= NAME_LOOKUP_THRESHOLD:
            return {name: self.node_state(name) for name in wanted}
        found = {state.name: state for state in self.list_nodes()}
        return {name: found.get(name) or NodeState(name=name, exists=False) for name in wanted}

    # -- nodes: writing --------------------------------------------------------------------------------------

    def _patch_node(self, name: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        return self._call(
            f"{what} on node {name}",
            "patch",
            "nodes",
            self._core.patch_node,
            name,
            body,
            _content_type=MERGE_PATCH,
        )

    def apply_labels(
        self, node_name: str, labels: Mapping[str, str | None], *, current: Mapping[str, str] | None = None
    ) -> bool:
        """Make the node's labels match ``labels`` (``None`` removes a label); others are left alone.

        Writes only the labels whose value changes, and nothing at all when none does; returns
        whether it wrote. ``current`` (the node's labels as the caller just listed them) saves the
        read. Raises ``KubeNotFound`` when the node does not exist, ``ValueError`` for an invalid
        key or value (nothing is sent).
        """
        for key, value in labels.items():
            _check_label(key, value)
        if current is None:
            current = node_state_from_object(self._read_node(node_name)).labels
        change = {
            k: v for k, v in labels.items() if current.get(k) != v and not (v is None and k not in current)
        }
        if not change:
            return False
        self._patch_node(node_name, {"metadata": {"labels": change}}, "label")
        return True

    def ensure_taint(
        self,
        node_name: str,
        key: str,
        *,
        value: str = "",
        effect: str = "NoSchedule",
        present: bool = True,
    ) -> bool:
        """Make the taint ``key=value:effect`` present (or, with ``present=False``, the taint with this
        key and effect absent). Other taints are kept. Writes only on change, with the node's
        resourceVersion as a precondition, retrying on conflict; returns whether it wrote."""
        if not is_label_key(key):
            raise ValueError(f"not a valid taint key: {key!r}")
        if value and not is_label_value(value):
            raise ValueError(f"not a valid taint value: {value!r}")
        if effect not in TAINT_EFFECTS:
            raise ValueError(f"taint effect must be one of {sorted(TAINT_EFFECTS)}, not {effect!r}")
        last: KubeConflict | None = None
        for _ in range(self._conflict_retries):
            obj = self._read_node(node_name)
            taints = list((obj.get("spec") or {}).get("taints") or [])
            same = [t for t in taints if t.get("key") == key and t.get("effect") == effect]
            others = [t for t in taints if not (t.get("key") == key and t.get("effect") == effect)]
            if present:
                if len(same) == 1 and (same[0].get("value") or "") == value:
                    return False
                new = [*others, Taint(key, value, effect).as_dict()]
            else:
                if not same:
                    return False
                new = others
            body = {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"taints": new or None},
            }
            try:
                self._patch_node(node_name, body, "taint")
            except KubeConflict as exc:
                last = exc
                continue
            return True
        assert last is not None
        raise last

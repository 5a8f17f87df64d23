"""A local HTTPS server speaking the Kubernetes REST API for the objects this project uses.

Served: ``v1`` Nodes (with the ``status`` subresource), Secrets, ConfigMaps, and Namespaces (read
only). Enough of the API for the official ``kubernetes`` Python client and ``kubectl`` to work
unchanged: legacy discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``), ``Table`` output for
``kubectl get``, label and field selectors, ``limit``/``continue``, the three patch types, a global
``resourceVersion`` with 409 on stale updates, and errors as ``Status`` objects (400/401/403/404/
405/409/415/422).

Authentication is as on a kubeadm cluster: the admin bearer token written into the kubeconfig;
bootstrap tokens (``<id>.<secret>``, checked against their ``kube-system/bootstrap-token-<id>``
Secret: type, secret, usage, expiry); anonymous requests may read ``/version``, the health
endpoints and ``kube-public/cluster-info`` and nothing else (403); a wrong token gets 401.
``cluster-info`` carries ``jws-kubeconfig-<id>`` signatures for every valid signing token, as the
bootstrap signer controller adds them (computed when read). A bootstrap identity may also create,
read and patch Nodes and their status: a stand-in for the node credentials TLS bootstrapping
would give it (this server has no CSR API).

Not a real API server: no watch, no admission, no server-side apply, no managedFields, continue
tokens are not snapshots, and nothing runs controllers (no node lifecycle, no token cleaner).

Every write request (POST/PUT/PATCH/DELETE on a resource) is recorded, whatever its outcome, so
tests can assert how many writes a piece of code sent: ``write_counts()``, ``writes``, or
``GET /_test/writes`` (admin token) for a server in another process.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography.hazmat.primitives import serialization

from testkit.kube_server import certs
from testkit.kube_server.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from testkit.kube_server.validation import (
    Cause,
    SelectorError,
    dns_label_errors,
    invalid,
    parse_field_selector,
    parse_selector,
    selector_matches,
    validate_data_map,
    validate_metadata,
    validate_taints,
)

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-worldland-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BOOTSTRAP_TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update")
    status: bool = False


RESOURCES = {
    r.plural: r
    for r in (
        Resource("nodes", "Node", "node", False, ("no",), status=True),
        Resource("secrets", "Secret", "secret", True),
        Resource("configmaps", "ConfigMap", "configmap", True, ("cm",)),
        Resource("namespaces", "Namespace", "namespace", False, ("ns",), verbs=("get", "list")),
    )
}


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "system:masters" in self.groups

    @property
    def is_bootstrap(self) -> bool:
        return "system:bootstrappers" in self.groups


ANONYMOUS = Identity("system:anonymous", ("system:unauthenticated",))
ADMIN = Identity("kubernetes-admin", ("system:masters", "system:authenticated"))


@dataclass(frozen=True)
class WriteRecord:
    seq: int  # increases by one per write request over the server's life (reset_writes keeps counting)
    method: str
    resource: str  # "nodes", "nodes/status", "secrets", ...
    namespace: str | None
    name: str | None
    content_type: str | None
    code: int
    user: str


class ApiError(Exception):
    """Becomes a ``Status`` response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        causes: list[Cause] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.name, self.kind, self.causes = name, kind, causes or []

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in self.causes
            ]
        if details:
            body["details"] = details
        return body


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.plural} "{name}" not found', name=name, kind=resource.plural)


def conflict(resource: Resource, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified;'
        " please apply your changes to the latest version and try again",
        name=name,
        kind=resource.plural,
    )


def invalid_object(resource: Resource, name: str, causes: list[Cause]) -> ApiError:
    summary = ", ".join(f"{c.field}: {c.message}" for c in causes)
    message = f'{resource.kind} "{name}" is invalid: ' + (f"[{summary}]" if len(causes) > 1 else summary)
    return ApiError(422, "Invalid", message, name=name, kind=resource.kind, causes=causes)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """What k8s.io/cluster-bootstrap's ``ComputeDetachedSignature`` makes: HS256, kid, payload cut out."""

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{b64url(content.encode())}".encode()
    signature = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{b64url(signature)}"


class _Outage:
    def __init__(self) -> None:
        self.mode: str | int | None = None  # "refuse" closes connections; an int answers that status
        self.failures: list[tuple[int, str, frozenset[str] | None]] = []


class KubeApiServer:
    """The server: start with ``with KubeApiServer() as api:`` (or ``start()``/``stop()``).

    ``kubeconfig_path`` is written on start (server ``https://<bind>:<port>``, the CA, the admin
    token). ``extra_ips`` are further addresses to listen on, on the same port (e.g. a lab
    bridge's address in the root namespace); the serving certificate covers all of them and
    ``cluster-info`` advertises ``advertise_address`` (default: the first extra IP, else bind).
    """

    def __init__(
        self,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        extra_ips: tuple[str, ...] | list[str] = (),
        advertise_address: str | None = None,
        workdir: str | Path | None = None,
        kubeconfig_path: str | Path | None = None,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bind = bind
        self.requested_port = port
        self.extra_ips = list(dict.fromkeys(extra_ips))
        self.advertise_address = advertise_address or (self.extra_ips[0] if self.extra_ips else bind)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="worldland-kube-"))
        self.kubeconfig_path = Path(kubeconfig_path) if kubeconfig_path else self.workdir / "admin.conf"
        self.token = token or secrets.token_urlsafe(32)
        self.clock = clock
        self.port = 0
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._rv = 1000
        self._writes: list[WriteRecord] = []
        self._write_seq = 0
        self._outage = _Outage()
        self._httpds: list[_HTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.ca: certs.KeyPair | None = None
        self._ca_key: Any = None
        self._ssl: ssl.SSLContext | None = None

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        self.ca, self._ca_key = certs.make_ca()
        self._make_ssl_context()
        first = self._listen(self.bind, self.requested_port)
        self.port = first.server_address[1]
        for ip in self.extra_ips:
            self._listen(ip, self.port)
        self._seed()
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    def stop(self) -> None:
        for httpd in self._httpds:
            httpd.shutdown()
            httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._httpds.clear()
        self._threads.clear()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_ssl_context(self) -> None:
        assert self.ca is not None
        ips = [self.bind, *self.extra_ips, "127.0.0.1"]
        if self.advertise_address not in ips:
            ips.append(self.advertise_address)
        serving = certs.make_serving_cert(self.ca, self._ca_key, ips)
        cert_file = self.workdir / "apiserver.crt"
        key_file = self.workdir / "apiserver.key"
        cert_file.write_bytes(serving.cert_pem + self.ca.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(serving.key_pem)
        (self.workdir / "ca.crt").write_bytes(self.ca.cert_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols(["http/1.1"])
        self._ssl = context

    def _listen(self, address: str, port: int) -> _HTTPServer:
        httpd = _HTTPServer((address, port), _Handler)
        httpd.api = self
        httpd.ssl_context = self._ssl
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=f"kube-api-{address}", daemon=True
        )
        thread.start()
        self._httpds.append(httpd)
        self._threads.append(thread)
        return httpd

    def add_listener(self, ip: str) -> None:
        """Also listen on ``ip`` (same port). The serving certificate must cover it: pass it in
        ``extra_ips`` at construction, or this re-issues the certificate for new connections."""
        if ip not in self.extra_ips:
            self.extra_ips.append(ip)
            self._make_ssl_context()
            for httpd in self._httpds:
                httpd.ssl_context = self._ssl
        self._listen(ip, self.port)

    # -- what the tests use ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(self.bind)

    def url_for(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"https://{host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        assert self.ca is not None
        return self.ca.cert_pem

    @property
    def ca_cert_hash(self) -> str:
        """``sha256:<hex>`` of the CA's SubjectPublicKeyInfo, as kubeadm prints it in join commands."""
        assert self.ca is not None
        spki = self.ca.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256:" + hashlib.sha256(spki).hexdigest()

    def kubeconfig_text(self, address: str | None = None, token: str | None = None) -> str:
        return certs.admin_kubeconfig(self.url_for(address or self.bind), self.ca_pem, token or self.token)

    def write_kubeconfig(
        self, path: str | Path, address: str | None = None, token: str | None = None
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(self.kubeconfig_text(address, token))
        return path

    def set_advertise_address(self, address: str) -> None:
        """Change the API endpoint that ``cluster-info`` advertises (bumps its resourceVersion)."""
        self.advertise_address = address
        with self._lock:
            obj = self._objects[("configmaps", "kube-public", "cluster-info")]
            obj["data"]["kubeconfig"] = certs.cluster_info_kubeconfig(self.url_for(address), self.ca_pem)
            obj["metadata"]["resourceVersion"] = self._next_rv()

    @property
    def writes(self) -> list[WriteRecord]:
        with self._lock:
            return list(self._writes)

    def write_counts(self) -> Counter[str]:
        """Write requests received, by resource (``nodes``, ``nodes/status``, ``secrets``, ...)."""
        with self._lock:
            return Counter(w.resource for w in self._writes)

    def reset_writes(self) -> None:
        with self._lock:
            self._writes.clear()

    @contextlib.contextmanager
    def outage(self, mode: str | int = "refuse") -> Iterator[None]:
        """While inside: every connection is closed without an answer (``"refuse"``), or every request
        is answered with HTTP status ``mode`` (e.g. 503)."""
        self._outage.mode = mode
        try:
            yield
        finally:
            self._outage.mode = None

    def fail_next(
        self, code: int, message: str = "injected failure", *, count: int = 1, methods=None
    ) -> None:
        """The next ``count`` API requests (of ``methods``, default all) get a ``Status`` with ``code``."""
        with self._lock:
            for _ in range(count):
                self._outage.failures.append((code, message, frozenset(methods) if methods else None))

    def get_object(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """A copy of a stored object as the API would serve it (not counted as a request)."""
        res = RESOURCES[resource]
        with self._lock:
            obj = self._objects.get((resource, namespace or "", name))
            return self._served(res, obj) if obj is not None else None

    def mutate(
        self, resource: str, name: str, change: Callable[[dict], None], namespace: str | None = None
    ) -> str:
        """Change a stored object in place, as another client would, bumping its resourceVersion."""
        with self._lock:
            obj = self._objects[(resource, namespace or "", name)]
            change(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            return obj["metadata"]["resourceVersion"]

    def verify_bootstrap_token(self, token: str) -> Identity | None:
        """The identity a bootstrap token authenticates as, or None (unknown, wrong, expired, unusable)."""
        match = BOOTSTRAP_TOKEN_RE.match(token or "")
        if not match:
            return None
        token_id, token_secret = match.groups()
        with self._lock:
            obj = self._objects.get(("secrets", "kube-system", f"bootstrap-token-{token_id}"))
            data = self._decoded(obj) if obj and obj.get("type") == BOOTSTRAP_TOKEN_TYPE else None
        if not data or not self._token_usable(data, "authentication"):
            return None
        if data.get("token-id") != token_id or not hmac.compare_digest(
            data.get("token-secret", ""), token_secret
        ):
            return None
        groups = ["system:bootstrappers", "system:authenticated"]
        groups += [g for g in data.get("auth-extra-groups", "").split(",") if g]
        return Identity(f"system:bootstrap:{token_id}", tuple(groups))

    # -- internals -------------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _seed(self) -> None:
        now = rfc3339(self.clock())
        with self._lock:
            for ns in SEED_NAMESPACES:
                self._objects[("namespaces", "", ns)] = {
                    "metadata": {
                        "name": ns,
                        "uid": str(uuid.uuid4()),
                        "resourceVersion": self._next_rv(),
                        "creationTimestamp": now,
                        "labels": {"kubernetes.io/metadata.name": ns},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }
            self._objects[("configmaps", "kube-public", "cluster-info")] = {
                "metadata": {
                    "name": "cluster-info",
                    "namespace": "kube-public",
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_rv(),
                    "creationTimestamp": now,
                },
                "data": {
                    "kubeconfig": certs.cluster_info_kubeconfig(
                        self.url_for(self.advertise_address), self.ca_pem
                    )
                },
            }
            self._objects[("configmaps", "kube-system", "kube-root-ca.crt")] = {
                "metadata": {
                    "name": "kube-root-ca.crt",
                    "namespace": "kube-system",
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_rv(),
                    "creationTimestamp": now,
                },
                "data": {"ca.crt": self.ca_pem.decode()},
            }

    @staticmethod
    def _decoded(obj: dict[str, Any]) -> dict[str, str]:
        out = {}
        for key, value in (obj.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
        return out

    def _token_usable(self, data: dict[str, str], usage: str) -> bool:
        if data.get(f"usage-bootstrap-{usage}") != "true":
            return False
        expiration = data.get("expiration")
        if expiration:
            try:
                if parse_rfc3339(expiration) <= self.clock():
                    return False
            except ValueError:
                return False
        return True

    def _served(self, res: Resource, obj: dict[str, Any], *, with_type: bool = True) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if (
            res.plural == "configmaps"
            and obj["metadata"].get("namespace") == "kube-public"
            and (obj["metadata"]["name"] == "cluster-info")
        ):
            self._sign_cluster_info(out)
        if with_type:
            return {"kind": res.kind, "apiVersion": "v1", **out}
        return out

    def _sign_cluster_info(self, obj: dict[str, Any]) -> None:
        content = (obj.get("data") or {}).get("kubeconfig")
        if content is None:
            return
        data = obj.setdefault("data", {})
        for key in [k for k in data if k.startswith("jws-kubeconfig-")]:
            del data[key]
        for (plural, ns, _name), secret in self._objects.items():
            if plural != "secrets" or ns != "kube-system" or secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
                continue
            token = self._decoded(secret)
            token_id, token_secret = token.get("token-id", ""), token.get("token-secret", "")
            if BOOTSTRAP_TOKEN_RE.match(f"{token_id}.{token_secret}") and self._token_usable(
                token, "signing"
            ):
                data[f"jws-kubeconfig-{token_id}"] = detached_jws(content, token_id, token_secret)

    # -- request handling (called by the handler threads) -------------------------------------------

    def authenticate(self, header: str | None) -> Identity | None:
        """None means 401 (a credential was given and is wrong); no credential is anonymous."""
        if not header:
            return ANONYMOUS
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return None
        credential = credential.strip()
        if hmac.compare_digest(credential, self.token):
            return ADMIN
        return self.verify_bootstrap_token(credential)

    @staticmethod
    def authorize(who: Identity, verb: str, resource: str, namespace: str | None, name: str | None) -> bool:
        if who.is_admin:
            return True
        if (
            verb == "get"
            and resource == "configmaps"
            and namespace == "kube-public"
            and name == "cluster-info"
        ):
            return True  # kubeadm's RBAC lets everyone, anonymous included, read cluster-info
        if who.is_bootstrap:
            # Stand-in for the node credentials that TLS bootstrapping would give (no CSR API here).
            if resource == "nodes" and verb in ("create", "get", "patch", "update"):
                return True
            if resource == "nodes/status" and verb in ("get", "patch", "update"):
                return True
        return False

    def check_injected(self, method: str) -> ApiError | None:
        with self._lock:
            if isinstance(self._outage.mode, int):
                return ApiError(
                    self._outage.mode, "ServiceUnavailable", "the server is currently unavailable"
                )
            for n, (code, message, methods) in enumerate(self._outage.failures):
                if methods is None or method in methods:
                    del self._outage.failures[n]
                    reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}
                    return ApiError(code, reason.get(code, "InternalError"), message)
        return None

    def record_write(self, method: str, resource: str, namespace, name, ctype, code: int, user: str) -> None:
        with self._lock:
            self._write_seq += 1
            self._writes.append(
                WriteRecord(self._write_seq, method, resource, namespace, name, ctype, code, user)
            )

    def writes_after(self, seq: int) -> list[WriteRecord]:
        """Write requests recorded after the one numbered ``seq`` (0: all since the last reset)."""
        with self._lock:
            return [w for w in self._writes if w.seq > seq]

    @property
    def write_seq(self) -> int:
        """The number of the latest write request (0 before any)."""
        with self._lock:
            return self._write_seq

    def list_objects(
        self,
        res: Resource,
        namespace: str | None,
        label_selector: str | None,
        field_selector: str | None,
        limit: int | None,
        cont: str | None,
    ) -> tuple[list[dict[str, Any]], str, str | None]:
        try:
            requirements = parse_selector(label_selector)
            fields = parse_field_selector(field_selector)
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        start = None
        if cont:
            try:
                start = tuple(json.loads(base64.urlsafe_b64decode(cont.encode()))["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
        with self._lock:
            list_rv = str(self._rv)
            keys = sorted(
                k for k in self._objects if k[0] == res.plural and (namespace is None or k[1] == namespace)
            )
            items: list[dict[str, Any]] = []
            next_start = None
            for key in keys:
                if start is not None and key[1:] <= start:
                    continue
                obj = self._objects[key]
                meta = obj["metadata"]
                if not selector_matches(requirements, meta.get("labels") or {}):
                    continue
                values = {
                    "metadata.name": meta["name"],
                    "metadata.namespace": meta.get("namespace", ""),
                    "type": obj.get("type", ""),
                }
                if not all((values[f] == v) == equal for f, equal, v in fields):
                    continue
                if limit and len(items) >= limit:
                    next_start = items[-1]["metadata"].get("namespace", ""), items[-1]["metadata"]["name"]
                    break
                items.append(self._served(res, obj, with_type=False))
        token = None
        if next_start is not None:
            token = base64.urlsafe_b64encode(json.dumps({"start": list(next_start)}).encode()).decode()
        return items, list_rv, token

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.get((res.plural, namespace or "", name))
            if obj is None:
                raise not_found(res, name)
            return self._served(res, obj)

    def _check_namespace(self, res: Resource, namespace: str | None) -> None:
        if res.namespaced and ("namespaces", "", namespace) not in self._objects:
            raise ApiError(
                404, "NotFound", f'namespaces "{namespace}" not found', name=namespace, kind="namespaces"
            )

    def _normalise(self, res: Resource, obj: dict[str, Any]) -> None:
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        for key in ("managedFields", "selfLink", "generation", "deletionTimestamp"):
            meta.pop(key, None)
        for key in ("labels", "annotations"):
            if meta.get(key) == {}:
                del meta[key]
        if res.plural == "secrets":
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.get("data") or {}
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode("utf-8")).decode("ascii")
                obj["data"] = data
            obj.setdefault("type", "Opaque")
            obj.pop("status", None)
        if res.plural == "configmaps":
            obj.pop("status", None)
        if res.plural == "nodes":
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict) and spec.get("taints") == []:
                del spec["taints"]

    def _validate(self, res: Resource, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        causes = validate_metadata(meta, namespaced=res.namespaced)
        if res.plural == "nodes":
            causes += validate_taints((obj.get("spec") or {}).get("taints"))
        elif res.plural == "secrets":
            causes += validate_data_map("data", obj.get("data"), base64_values=True)
        elif res.plural == "configmaps":
            causes += validate_data_map("data", obj.get("data"), base64_values=False)
        elif res.plural == "namespaces" and isinstance(meta.get("name"), str):
            causes += [invalid("metadata.name", meta["name"], e) for e in dns_label_errors(meta["name"])]
        if causes:
            raise invalid_object(res, str(meta.get("name") or ""), causes)

    def create(self, res: Resource, namespace: str | None, body: Any, dry_run: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", f"the body of the request must be a {res.kind} object")
        kind = body.get("kind")
        if kind not in (None, res.kind):
            raise ApiError(
                400, "BadRequest", f"the API version in the data (v1) does not match the kind {kind}"
            )
        obj = copy.deepcopy(body)
        self._normalise(res, obj)
        meta = obj["metadata"]
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5)
            )
        self._validate(res, obj)
        with self._lock:
            self._check_namespace(res, namespace)
            key = (res.plural, namespace or "", meta["name"])
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{res.plural} "{meta["name"]}" already exists',
                    name=meta["name"],
                    kind=res.plural,
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rfc3339(self.clock())
            meta["resourceVersion"] = str(self._rv + 1)
            if not dry_run:
                self._next_rv()
                self._objects[key] = obj
            return self._served(res, obj)

    def _store_update(
        self,
        res: Resource,
        key: tuple[str, str, str],
        old: dict[str, Any],
        new: dict[str, Any],
        subresource: str,
    ) -> dict[str, Any]:
        """Apply update rules to ``new`` (a full object), store it, return the served form."""
        self._normalise(res, new)
        meta = new["metadata"]
        old_meta = old["metadata"]
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status", {})
            new = merged
            meta = new["metadata"]
        elif res.status:
            new["status"] = copy.deepcopy(old.get("status", {}))
            if not new["status"]:
                new.pop("status")
        for field_name in ("name", "uid", "creationTimestamp", "namespace"):
            if field_name in old_meta:
                meta[field_name] = old_meta[field_name]
            else:
                meta.pop(field_name, None)
        if res.plural == "secrets" and new.get("type") != old.get("type"):
            raise invalid_object(
                res, old_meta["name"], [invalid("type", new.get("type"), "field is immutable")]
            )
        self._validate(res, new)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return self._served(res, old)  # a no-op write does not bump resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        return self._served(res, new)

    def replace(
        self, res: Resource, namespace: str | None, name: str, body: Any, subresource: str, dry_run: bool
    ) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", f"the body of the request must be a {res.kind} object")
        body_name = (body.get("metadata") or {}).get("name")
        if body_name != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({body_name}) does not match the name on the URL ({name})",
            )
        with self._lock:
            key = (res.plural, namespace or "", name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(res, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            if dry_run:
                return self._served(res, old)
            return self._store_update(res, key, old, copy.deepcopy(body), subresource)

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        subresource: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        with self._lock:
            key = (res.plural, namespace or "", name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(res, name)
            current = self._served(res, old)
            try:
                if content_type == MERGE_PATCH:
                    patched = merge_patch(current, body)
                elif content_type == STRATEGIC_MERGE_PATCH:
                    patched = strategic_merge_patch(current, body)
                else:
                    patched = json_patch(current, body)
            except PatchError as exc:
                raise invalid_object(res, name, [Cause("", str(exc))]) from None
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise ApiError(400, "BadRequest", "the patch must leave an object with metadata")
            wanted = patched["metadata"].get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            if (patched["metadata"].get("name") or name) != name:
                raise ApiError(400, "BadRequest", "metadata.name: the name cannot be changed by a patch")
            patched["metadata"]["name"] = name
            if dry_run:
                return current
            return self._store_update(res, key, old, patched, subresource)

    def delete(
        self, res: Resource, namespace: str | None, name: str, body: Any, dry_run: bool
    ) -> dict[str, Any]:
        with self._lock:
            key = (res.plural, namespace or "", name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(res, name)
            preconditions = (body or {}).get("preconditions") if isinstance(body, dict) else None
            if preconditions:
                rv, uid = preconditions.get("resourceVersion"), preconditions.get("uid")
                if (rv and rv != old["metadata"]["resourceVersion"]) or (
                    uid and uid != old["metadata"]["uid"]
                ):
                    raise conflict(res, name)
            if not dry_run:
                del self._objects[key]
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": res.plural, "uid": old["metadata"]["uid"]},
            }


# -- HTTP ----------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeApiServer
    ssl_context: ssl.SSLContext | None

    def finish_request(self, request, client_address) -> None:  # type: ignore[override]
        # The TLS handshake runs here, in the connection's own thread, so a slow client cannot
        # hold up accept().
        if self.api._outage.mode == "refuse":
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)
            return
        assert self.ssl_context is not None
        request.settimeout(30)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


_PATH = re.compile(
    r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?/?$"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave as separate writes: without this, Nagle + delayed ACK add 40 ms a request.
    disable_nagle_algorithm = True
    server: _HTTPServer
    server_version = "worldland-kube-test"

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing ------------------------------------------------------------------------------------

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > MAX_BODY:
                    raise ApiError(413, "RequestEntityTooLarge", "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", "request body too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        if api._outage.mode == "refuse":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        record: tuple[str, str | None, str | None] | None = None
        try:
            raw = self._read_body()
        except (ValueError, ApiError) as exc:
            self.close_connection = True
            error = exc if isinstance(exc, ApiError) else ApiError(400, "BadRequest", "malformed body")
            self._send(error.code, error.status())
            return
        who = api.authenticate(self.headers.get("Authorization"))
        try:
            match = _PATH.match(parts.path)
            if method in WRITE_METHODS and match and match["res"] in RESOURCES:
                resource = match["res"] + (f"/{match['sub']}" if match["sub"] else "")
                record = (resource, match["ns"], match["name"])
            if who is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            code, body, ctype = self._route(method, parts.path, query, raw, who, match)
        except ApiError as exc:
            code, body, ctype = exc.code, exc.status(), "application/json"
        if record is not None:
            user = who.user if who else "<invalid credentials>"
            api.record_write(method, *record, self.headers.get("Content-Type"), code, user)
        self._send(code, body, ctype)

    def _route(
        self, method: str, path: str, query: dict[str, str], raw: bytes, who: Identity, match: re.Match | None
    ) -> tuple[int, Any, str]:
        api = self.server.api
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, b"ok", "text/plain; charset=utf-8"
        if path == "/version" and method == "GET":
            return 200, SERVER_VERSION, "application/json"
        if path.startswith("/_test/"):
            return self._test_endpoint(method, path, who)
        injected = api.check_injected(method)
        if injected is not None:
            raise injected
        if method == "GET" and path in ("/api", "/api/"):
            return (
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{api.bind}:{api.port}"}
                    ],
                },
                "application/json",
            )
        if method == "GET" and path in ("/apis", "/apis/"):
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}, "application/json"
        if method == "GET" and path in ("/api/v1", "/api/v1/"):
            return 200, self._resource_list(), "application/json"
        if match is None or match["res"] not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        res = RESOURCES[match["res"]]
        namespace, name, sub = match["ns"], match["name"], match["sub"]
        if match["ns"] is not None and not res.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and res.status and name):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verb = {
            "GET": "get" if name else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }[method]
        if verb.upper() not in {v.upper() for v in res.verbs} or (method == "POST" and name):
            raise ApiError(
                405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
            )
        if not api.authorize(who, verb, res.plural + (f"/{sub}" if sub else ""), namespace, name):
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            target = f"{res.plural}" + (f' "{name}"' if name else "")
            raise ApiError(
                403,
                "Forbidden",
                f'{target} is forbidden: User "{who.user}" cannot {verb} resource "{res.plural}"'
                f' in API group ""{where}',
                name=name,
                kind=res.plural,
            )
        if query.get("watch") in ("true", "1"):
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by this test server")
        dry_run = query.get("dryRun") == "All"
        body: Any = None
        if method in ("POST", "PUT", "PATCH") or (method == "DELETE" and raw):
            try:
                body = json.loads(raw or b"null")
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"error decoding request body: {exc}") from None
        accept = self.headers.get("Accept", "")
        if verb == "list":
            limit = int(query["limit"]) if query.get("limit", "").isdigit() else None
            items, list_rv, token = api.list_objects(
                res,
                namespace,
                query.get("labelSelector"),
                query.get("fieldSelector"),
                limit,
                query.get("continue"),
            )
            if "as=Table" in accept:
                return 200, _table(res, items, list_rv, query), _table_type(accept)
            meta: dict[str, Any] = {"resourceVersion": list_rv}
            if token:
                meta["continue"] = token
            return (
                200,
                {"kind": f"{res.kind}List", "apiVersion": "v1", "metadata": meta, "items": items},
                "application/json",
            )
        if verb == "get":
            obj = api.get(res, namespace, name)
            if "as=Table" in accept:
                return 200, _table(res, [obj], obj["metadata"]["resourceVersion"], query), _table_type(accept)
            return 200, obj, "application/json"
        if verb == "create":
            return 201, api.create(res, namespace, body, dry_run), "application/json"
        if verb == "update":
            return 200, api.replace(res, namespace, name, body, sub or "", dry_run), "application/json"
        if verb == "patch":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type in APPLY_PATCH:
                raise ApiError(
                    415, "UnsupportedMediaType", "server-side apply is not supported by this test server"
                )
            if content_type not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}",
                )
            return (
                200,
                api.patch(res, namespace, name, body, content_type, sub or "", dry_run),
                "application/json",
            )
        return 200, api.delete(res, namespace, name, body, dry_run), "application/json"

    def _test_endpoint(self, method: str, path: str, who: Identity) -> tuple[int, Any, str]:
        api = self.server.api
        if not who.is_admin:
            raise ApiError(403, "Forbidden", "test endpoints need the admin token")
        if path == "/_test/writes" and method == "GET":
            writes = api.writes
            return (
                200,
                {
                    "total": len(writes),
                    "by_resource": dict(Counter(w.resource for w in writes)),
                    "writes": [w.__dict__ for w in writes],
                },
                "application/json",
            )
        if path == "/_test/writes/reset" and method == "POST":
            api.reset_writes()
            return 200, {"total": 0}, "application/json"
        raise ApiError(404, "NotFound", "no such test endpoint")

    @staticmethod
    def _resource_list() -> dict[str, Any]:
        resources = []
        for res in RESOURCES.values():
            entry: dict[str, Any] = {
                "name": res.plural,
                "singularName": res.singular,
                "namespaced": res.namespaced,
                "kind": res.kind,
                "verbs": list(res.verbs),
            }
            if res.short_names:
                entry["shortNames"] = list(res.short_names)
            resources.append(entry)
            if res.status:
                resources.append(
                    {
                        "name": f"{res.plural}/status",
                        "singularName": "",
                        "namespaced": res.namespaced,
                        "kind": res.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}


def _table_type(accept: str) -> str:
    return "application/json;as=Table;v=v1;g=meta.k8s.io"


def _age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    seconds = max(0, int(time.time() - parse_rfc3339(created)))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _node_status(obj: dict[str, Any]) -> str:
    ready = "Unknown"
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    return ready


def _table(res: Resource, items: list[dict[str, Any]], list_rv: str, query: dict[str, str]) -> dict[str, Any]:
    """The server-side printing ``kubectl get`` asks for (``Accept: ...;as=Table``)."""

    def col(name: str, kind: str = "string", fmt: str = "") -> dict[str, Any]:
        return {"name": name, "type": kind, "format": fmt, "description": name, "priority": 0}

    if res.plural == "nodes":
        columns = [col("Name", fmt="name"), col("Status"), col("Roles"), col("Age"), col("Version")]

        def cells(o: dict[str, Any]) -> list[Any]:
            roles = sorted(
                k.split("/", 1)[1]
                for k in (o["metadata"].get("labels") or {})
                if k.startswith("node-role.kubernetes.io/")
            )
            version = ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
            age = _age(o["metadata"].get("creationTimestamp"))
            return [o["metadata"]["name"], _node_status(o), ",".join(roles) or "<none>", age, version]
    elif res.plural == "secrets":
        columns = [col("Name", fmt="name"), col("Type"), col("Data", "integer"), col("Age")]

        def cells(o: dict[str, Any]) -> list[Any]:
            age = _age(o["metadata"].get("creationTimestamp"))
            return [o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), age]
    elif res.plural == "configmaps":
        columns = [col("Name", fmt="name"), col("Data", "integer"), col("Age")]

        def cells(o: dict[str, Any]) -> list[Any]:
            return [
                o["metadata"]["name"],
                len(o.get("data") or {}),
                _age(o["metadata"].get("creationTimestamp")),
            ]
    else:
        columns = [col("Name", fmt="name"), col("Status"), col("Age")]

        def cells(o: dict[str, Any]) -> list[Any]:
            phase = (o.get("status") or {}).get("phase", "")
            return [o["metadata"]["name"], phase, _age(o["metadata"].get("creationTimestamp"))]

    include = query.get("includeObject", "Metadata")
    rows = []
    for item in items:
        row: dict[str, Any] = {"cells": cells(item)}
        if include == "Object":
            row["object"] = {
                "kind": res.kind,
                "apiVersion": "v1",
                **{k: v for k, v in item.items() if k not in ("kind", "apiVersion")},
            }
        elif include == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": item["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": list_rv},
        "columnDefinitions": columns,
        "rows": rows,
    }


def kubeconfig_server_ca(path: str | Path) -> tuple[str, bytes]:
    """(server URL, CA PEM) from a kubeconfig's current context, for tests that read it back."""
    doc = yaml.safe_load(Path(path).read_text())
    context_name = doc.get("current-context")
    context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    return cluster["server"], base64.b64decode(cluster["certificate-authority-data"])


__all__ = ["RESOURCES", "ApiError", "Identity", "KubeApiServer", "WriteRecord", "detached_jws"]

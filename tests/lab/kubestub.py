"""A tiny Kubernetes API stand-in for testing the kubeadm stand-in on its own.

Serves just what ``kubeadm join`` needs, over HTTPS with its own CA, in Kubernetes' JSON shapes:
``GET /api/v1/namespaces/kube-system/secrets/<name>``, ``GET .../kube-public/configmaps/cluster-info``
(optional), ``GET/POST /api/v1/nodes[/<name>]`` and ``PATCH /api/v1/nodes/<name>/status`` (merge
patch). Bearer-token auth. The project's real test server is testkit/kube_server/; this stub only keeps
the lab's own tests independent of it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca_and_cert(address: str) -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, server cert PEM, server key PEM); the server cert is valid for ``address``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def ca_hash(ca_pem: bytes) -> str:
    """kubeadm's discovery hash: sha256 of the CA certificate's SubjectPublicKeyInfo (DER)."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def bootstrap_token_secret(token: str, minutes: int = 30, **overrides: str) -> dict[str, Any]:
    token_id, secret = token.split(".")
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
    data = {
        "token-id": token_id,
        "token-secret": secret,
        "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
        **overrides,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


class KubeStub:
    def __init__(self, address: str, cluster_info: bool = True) -> None:
        self.address = address
        self.ca_pem, cert, key = make_ca_and_cert(address)
        self.token = "lab-admin-" + hashlib.sha256(self.ca_pem).hexdigest()[:16]
        self.secrets: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.cluster_info = cluster_info
        self._tmp = tempfile.TemporaryDirectory(prefix="kubestub-")
        tmp = Path(self._tmp.name)
        (tmp / "tls.crt").write_bytes(cert)
        (tmp / "tls.key").write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp / "tls.crt"), str(tmp / "tls.key"))
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                stub.requests.append((method, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                public = self.path == "/api/v1/namespaces/kube-public/configmaps/cluster-info"
                if not public and self.headers.get("Authorization") != f"Bearer {stub.token}":
                    return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                code, obj = stub.route(method, self.path, body)
                self._send(code, obj)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def ca_hash(self) -> str:
        return ca_hash(self.ca_pem)

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = path.split("?")[0].strip("/").split("/")
        if (
            parts[:4] == ["api", "v1", "namespaces", "kube-system"]
            and parts[4:5] == ["secrets"]
            and method == "GET"
        ):
            secret = self.secrets.get(parts[5])
            return (
                (200, secret)
                if secret
                else (404, _status(404, "NotFound", f'secrets "{parts[5]}" not found'))
            )
        if parts[:4] == ["api", "v1", "namespaces", "kube-public"] and self.cluster_info:
            kubeconfig = (
                "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                f"    certificate-authority-data: {base64.b64encode(self.ca_pem).decode()}\n"
                f"    server: https://{self.endpoint}\n  name: ''\ncontexts: []\nusers: []\n"
            )
            return 200, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info",
                         "namespace": "kube-public"}, "data": {"kubeconfig": kubeconfig}}  # fmt: skip
        if parts[:3] == ["api", "v1", "nodes"]:
            if method == "POST" and len(parts) == 3:
                name = body["metadata"]["name"]
                if name in self.nodes:
                    return 409, _status(409, "AlreadyExists", f'nodes "{name}" already exists')
                body["metadata"]["resourceVersion"] = "1"
                self.nodes[name] = body
                return 201, body
            name = parts[3] if len(parts) > 3 else ""
            node = self.nodes.get(name)
            if node is None:
                return 404, _status(404, "NotFound", f'nodes "{name}" not found')
            if method == "GET" and len(parts) == 4:
                return 200, node
            if method == "PATCH" and parts[4:] == ["status"]:
                node["status"] = {**node.get("status", {}), **body["status"]}
                return 200, node
        return 404, _status(404, "NotFound", "the server could not find the requested resource")

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n"
            f"    server: https://{self.endpoint}\n"
            f"    certificate-authority-data: {base64.b64encode(self.ca_pem).decode()}\n"
            "users:\n- name: admin\n  user:\n"
            f"    token: {self.token}\n"
            "contexts:\n- name: stub\n  context:\n    cluster: stub\n    user: admin\ncurrent-context: stub\n"
        )
        return path

    def __enter__(self) -> KubeStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._tmp.cleanup()

"""The certificates and keys of ``testkit/realkube.py``'s control plane, made with ``cryptography``.

What kubeadm's ``certs`` phase makes, less what this control plane does not run (front proxy, etcd TLS):
a cluster CA, the apiserver's serving certificate (SANs 127.0.0.1, the in-cluster names and any extra
addresses such as a lab gateway), the apiserver's client certificate for kubelets, the service-account
key pair, an admin client certificate in ``system:masters`` and the controller-manager's client
certificate (``system:kube-controller-manager``, which the bootstrap RBAC policy already grants).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Kubeconfig data encoded as the Kubernetes API test server encodes it (one helper for both in testkit).
from testkit.kube_server.certs import b64

SERVICE_IP = "10.96.0.1"  # first address of --service-cluster-ip-range=10.96.0.0/16: the `kubernetes` Service
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ADMIN_USER = "realkube-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
CLUSTER_NAME = "realkube"


@dataclass(frozen=True)
class Pki:
    """The directory everything was written to (keys mode 0600), and what is read back from it."""

    dir: Path

    def file(self, name: str) -> Path:
        """``file("ca.crt")``, ``file("admin.key")``, ``file("sa.pub")``, ..."""
        return self.dir / name

    @property
    def ca_pem(self) -> bytes:
        return (self.dir / "ca.crt").read_bytes()

    @property
    def ca_cert_hash(self) -> str:
        """``sha256:<hex>`` of the CA's SubjectPublicKeyInfo (what ``kubeadm join`` pins)."""
        return ca_cert_hash(self.ca_pem)


def ca_cert_hash(ca_pem: bytes) -> str:
    spki = (
        x509.load_pem_x509_certificate(ca_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _usage(*, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _issue(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    days: int,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, serving_addresses: Iterable[str] = ("127.0.0.1",), days: int = 30) -> Pki:
    """Writes a fresh CA and every certificate and key into ``directory`` (created, mode 0700)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_subject = _name("kubernetes")
    now = dt.datetime.now(dt.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca.crt", _pem(ca_cert))
    _write(directory / "ca.key", _key_pem(ca_key), private=True)

    ips = list(dict.fromkeys(["127.0.0.1", *serving_addresses, SERVICE_IP]))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVING_DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    issued = {
        "apiserver": _issue(
            ca_cert, ca_key, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, days, sans
        ),
        "apiserver-kubelet-client": _issue(
            ca_cert,
            ca_key,
            _name(KUBELET_CLIENT_USER, "system:masters"),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            days,
        ),
        "admin": _issue(
            ca_cert, ca_key, _name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, days
        ),
        "kcm": _issue(ca_cert, ca_key, _name(CONTROLLER_MANAGER_USER), ExtendedKeyUsageOID.CLIENT_AUTH, days),
    }
    for stem, (cert, key) in issued.items():
        _write(directory / f"{stem}.crt", _pem(cert))
        _write(directory / f"{stem}.key", _key_pem(key), private=True)

    sa_key = _new_key()
    _write(directory / "sa.key", _key_pem(sa_key), private=True)
    _write(
        directory / "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return Pki(directory)


def client_kubeconfig(pki: Pki, server: str, user: str) -> str:
    """A kubeconfig for client certificate ``user`` (``admin``, ``kcm``) with everything embedded."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64((pki.dir / f"{user}.crt").read_bytes()),
                    "client-key-data": b64((pki.dir / f"{user}.key").read_bytes()),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, text.encode(), private=True)
    return path

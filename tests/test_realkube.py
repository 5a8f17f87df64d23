"""``testkit/realkube.py``: the real control plane from ``../shared/kube`` that tests and the demo use.

The cluster tests use the session's ``real_kube`` (skipped, with the reason, where ``../shared/kube`` or
etcd cannot be had); two start one more of their own to see what ``stop()`` and a failed start leave
behind. The rest (addresses, PKI, unpacking, availability) needs no cluster.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from testkit import realkube
from testkit.kube_server import detached_jws
from testkit.realkube import RealControlPlane, RealKubeError
from testkit.realkube_pki import make_pki
from worldland.kube import NODE_TOKEN_GROUP, KubeClient

VERSION = "v1.32.13"


def call(
    plane: RealControlPlane,
    path: str,
    token: str | None = None,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    address: str = "127.0.0.1",
) -> tuple[int, Any]:
    """One request with no client certificate: anonymous, or with a bearer ``token``."""
    request = urllib.request.Request(  # noqa: S310 (https to the test's own apiserver)
        plane.url_for(address) + path, method=method, data=json.dumps(body).encode() if body else None
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cadata=plane.ca_pem.decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def listening_addresses(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}


# -- the session's control plane -----------------------------------------------------------------------


def test_comes_up_and_serves_the_real_version(real_kube: RealControlPlane) -> None:
    assert real_kube.server_url == f"https://127.0.0.1:{real_kube.port}"
    assert real_kube.description == f"real kube-apiserver {VERSION} from ../shared/kube"
    status, version = call(real_kube, "/version")  # anonymous: system:public-info-viewer
    assert status == 200 and version["gitVersion"] == VERSION
    with KubeClient.from_kubeconfig(real_kube.kubeconfig) as client:
        assert client.api_endpoint().port == real_kube.port
        assert client.ca_cert_hash() == real_kube.ca_cert_hash
    assert set(real_kube.pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    assert all(alive(pid) for pid in real_kube.pids.values())
    # Nothing listens beyond loopback (the controller-manager serves no port at all).
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        assert listening_addresses(real_kube.pids[name]) <= {"127.0.0.1"}, name
    assert real_kube.workdir is not None and not real_kube.workdir.is_relative_to(realkube.REPO)


def test_cluster_info_is_readable_anonymously(real_kube: RealControlPlane) -> None:
    status, cm = call(real_kube, "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    assert status == 200
    cluster = yaml.safe_load(cm["data"]["kubeconfig"])["clusters"][0]["cluster"]
    assert cluster["server"] == real_kube.server_url
    assert base64.b64decode(cluster["certificate-authority-data"]) == real_kube.ca_pem
    # ... and nothing else is: the anonymous user has only kubeadm's one Role.
    assert call(real_kube, "/api/v1/namespaces/kube-public/configmaps")[0] == 403
    assert call(real_kube, "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")[0] == 403


def test_a_bootstrap_token_secret_authenticates(real_kube: RealControlPlane) -> None:
    with KubeClient.from_kubeconfig(real_kube.kubeconfig) as client:
        token = client.create_bootstrap_token(provider_id="prov-realkube", ttl_seconds=900)
        try:
            status, review = call(
                real_kube,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                token.token,
                method="POST",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            assert status == 201, review
            user = review["status"]["userInfo"]
            assert user["username"] == f"system:bootstrap:{token.token_id}"
            assert {NODE_TOKEN_GROUP, "system:bootstrappers", "system:authenticated"} <= set(user["groups"])
            assert call(real_kube, "/api", f"{token.token_id}.{'0' * 16}")[0] == 401  # wrong secret
            # What kubeadm join reads with the token (the kubeadm objects' RBAC), and no more.
            for name in ("kubeadm-config", "kubelet-config"):
                assert (
                    call(real_kube, f"/api/v1/namespaces/kube-system/configmaps/{name}", token.token)[0]
                    == 200
                )
            assert (
                call(real_kube, "/apis/certificates.k8s.io/v1/certificatesigningrequests", token.token)[0]
                == 200
            )
            assert call(real_kube, "/api/v1/namespaces/kube-system/secrets", token.token)[0] == 403
            # The real bootstrap signer signs cluster-info for it, byte for byte as the test server does.
            deadline = time.monotonic() + 30
            while True:
                status, cm = call(real_kube, "/api/v1/namespaces/kube-public/configmaps/cluster-info")
                signature = cm["data"].get(f"jws-kubeconfig-{token.token_id}")
                if signature or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert signature == detached_jws(cm["data"]["kubeconfig"], token.token_id, token.secret)
        finally:
            client.delete_bootstrap_token(token.token_id)


# -- one more of its own ---------------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_scratch_dir(real_kube: RealControlPlane) -> None:
    # 127.0.0.2 stands in for a lab gateway: served through the relay, in the certificate, advertised.
    with RealControlPlane(extra_addresses=("127.0.0.2",)) as plane:
        pids, workdir = plane.pids, plane.workdir
        assert set(pids) == {"etcd", "kube-apiserver", "relay", "kube-controller-manager"}
        assert plane.port != real_kube.port
        assert listening_addresses(pids["relay"]) == {"127.0.0.2"}
        assert call(plane, "/version", address="127.0.0.2") == call(plane, "/version")
        status, cm = call(
            plane, "/api/v1/namespaces/kube-public/configmaps/cluster-info", address="127.0.0.2"
        )
        assert status == 200
        assert yaml.safe_load(cm["data"]["kubeconfig"])["clusters"][0]["cluster"]["server"] == plane.url_for(
            "127.0.0.2"
        )
        assert workdir is not None and workdir.is_dir()
    assert not any(alive(pid) for pid in pids.values()), pids
    assert not workdir.exists()
    plane.stop()  # a second stop is a no-op
    assert all(alive(pid) for pid in real_kube.pids.values())  # the session's own is untouched


def test_a_failed_start_leaves_nothing_behind(
    real_kube: RealControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kube-apiserver that cannot start (here: a flag it does not know) while etcd already runs.
    spawned: dict[str, list[int]] = {}
    spawn = RealControlPlane._spawn

    def spawn_broken(self: RealControlPlane, name: str, command: list[str]) -> Any:
        if name == "kube-apiserver":
            command = [*command, "--no-such-flag"]
        process = spawn(self, name, command)
        spawned.setdefault(name, []).append(process.pid)
        spawned.setdefault("workdir", []).append(str(self.workdir))
        return process

    monkeypatch.setattr(RealControlPlane, "_spawn", spawn_broken)
    with pytest.raises(RealKubeError, match=r"(?s)kube-apiserver exited.*no-such-flag"), RealControlPlane():
        pass
    assert len(spawned["etcd"]) == 1 and len(spawned["kube-apiserver"]) == 1  # only a taken port is retried
    assert not any(alive(pid) for pid in spawned["etcd"] + spawned["kube-apiserver"])
    assert not Path(spawned["workdir"][0]).exists()


# -- no cluster needed ----------------------------------------------------------------------------------


def test_extra_addresses_never_reach_outside() -> None:
    assert realkube.check_extra_address("127.0.0.1") == "127.0.0.1"
    for refused in ("0.0.0.0", "::", "224.0.0.1", "8.8.8.8", "lab-gateway"):  # noqa: S104 (refused)
        with pytest.raises(ValueError):
            realkube.check_extra_address(refused)
    with pytest.raises(ValueError, match="not an address of this machine"):
        realkube.check_extra_address("10.255.254.253")
    # The address of the interface with the default route (this machine's outside one) is refused.
    default_devs = {r.get("dev") for r in realkube._ip_json("-4", "route", "show", "default")}
    outside = [
        info["local"]
        for link in realkube._ip_json("-4", "addr", "show")
        if link.get("ifname") in default_devs
        for info in link.get("addr_info", [])
    ]
    for address in outside:
        with pytest.raises(ValueError, match="refusing"):
            realkube.check_extra_address(address)
    with pytest.raises(ValueError):
        RealControlPlane(extra_addresses=("0.0.0.0",))  # noqa: S104 (refused)
    with pytest.raises(ValueError):
        RealControlPlane(advertise_address="10.0.0.1")


def test_pki(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ["10.213.250.1"])
    serving = x509.load_pem_x509_certificate(pki.file("apiserver.crt").read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "10.213.250.1", "10.96.0.1"}
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    admin = x509.load_pem_x509_certificate(pki.file("admin.crt").read_bytes())
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kcm = x509.load_pem_x509_certificate(pki.file("kcm.crt").read_bytes())
    assert (
        kcm.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    )
    assert admin.issuer == serving.issuer == x509.load_pem_x509_certificate(pki.ca_pem).subject
    for key in ("ca.key", "apiserver.key", "admin.key", "kcm.key", "sa.key"):
        assert pki.file(key).stat().st_mode & 0o077 == 0, key
    assert pki.ca_cert_hash.startswith("sha256:") and len(pki.ca_cert_hash) == 71


def fake_shared(root: Path, content: bytes, listed: str | None = None) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "kube-apiserver.gz").write_bytes(gzip.compress(content))
    digest = listed or hashlib.sha256(content).hexdigest()
    (root / "bin" / "SHA256SUMS").write_text(f"{digest}  kube-apiserver\n")
    return root


def test_binaries_are_unpacked_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(realkube.CACHE_ENV, str(tmp_path / "cache"))
    shared = fake_shared(tmp_path / "good", b"#!/bin/sh\necho fake\n")
    path = realkube.kube_binary("kube-apiserver", shared)
    assert path.read_bytes() == b"#!/bin/sh\necho fake\n" and os.access(path, os.X_OK)
    assert path.is_relative_to(tmp_path / "cache" / "kube")
    mtime = path.stat().st_mtime_ns
    assert realkube.kube_binary("kube-apiserver", shared) == path and path.stat().st_mtime_ns == mtime
    bad = fake_shared(tmp_path / "bad", b"tampered", listed="0" * 64)
    with pytest.raises(RealKubeError, match="SHA256SUMS"):
        realkube.kube_binary("kube-apiserver", bad)
    with pytest.raises(RealKubeError, match="not listed"):
        realkube.kube_binary("kubelet", shared)


def test_available_says_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(realkube.SHARED_ENV, str(tmp_path / "absent"))
    status = realkube.available(fetch=False)
    assert not status and "absent" in status.reason
    monkeypatch.setenv(realkube.SHARED_ENV, str(fake_shared(tmp_path / "partial", b"x")))
    status = realkube.available(fetch=False)
    assert not status and "kube-controller-manager" in status.reason
    monkeypatch.setenv(realkube.DISABLE_ENV, "0")
    assert not realkube.available(fetch=False)

"""kubeadm stand-in: ``join`` against a Kubernetes API (real or test server), ``config validate``,
``reset``, ``version``.

``kubeadm join ENDPOINT --token ID.SECRET --discovery-token-ca-cert-hash sha256:HEX [--node-name N]``
or ``kubeadm join --config FILE`` (a ``JoinConfiguration``, kubeadm.k8s.io/v1beta3 or v1beta4; its
``nodeRegistration`` name, criSocket, taints, kubeletExtraArgs and ignorePreflightErrors are used).
``kubeadm config validate --config FILE`` checks that file as a join would read it (known fields only, the
discovery values) and prints ``ok``. A join:

1. validates the arguments as kubeadm does, and REFUSES ``--discovery-token-unsafe-skip-ca-verification``
   (and ``unsafeSkipCAVerification: true``): the project never joins without pinning the CA;
2. preflight: ``/etc/kubernetes/kubelet.conf`` must not exist, containerd must be running (per the
   systemctl stand-in); ``--ignore-preflight-errors`` works as in kubeadm;
3. pins the CA: sha256 of the cluster CA certificate's SubjectPublicKeyInfo (DER) must be one of the
   given hashes. The CA is the one in ``kube-public/cluster-info`` when the server has it, else the
   lab's CA;
4. checks the bootstrap token against ``kube-system/bootstrap-token-<id>`` (secret, expiration,
   ``usage-bootstrap-authentication`` and ``usage-bootstrap-signing``);
5. registers the Node (``POST /api/v1/nodes``; Ready, with ``nvidia.com/gpu`` allocatable when the host
   has GPUs and a driver), writes ``/etc/kubernetes/kubelet.conf``, ``/etc/kubernetes/pki/ca.crt`` and
   ``/var/lib/kubelet/{config.yaml,kubeadm-flags.env}``, and starts kubelet.service: in a kube-mode host
   (the lab-built kubelet package, whose kubelet only sleeps) through the systemctl stand-in, as kubeadm
   runs ``systemctl restart kubelet``; elsewhere it marks the unit running. ``reset`` stops it likewise.

The version it reports (``version``, the Node's kubeletVersion) is ``$WORLDLAND_LAB_KUBERNETES_VERSION``
(set by the lab-built package's wrapper: the package's version), else the host config's.

LAB SHORTCUT: a real kubeadm authenticates with the bootstrap token itself and lets the kubelet register
the Node. This stand-in instead reads an admin kubeconfig that the lab put in the host's config
(``Lab.attach(kubeconfig=...)``) and uses it, over HTTPS to the endpoint on the join line with the CA
from that kubeconfig, to read the token Secret and to create the Node. Only standard Kubernetes paths and
JSON are used, so any conforming API server works.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import _services
from _common import config, log, units

TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
KUBELET_CONF = Path("/etc/kubernetes/kubelet.conf")
CA_CRT = Path("/etc/kubernetes/pki/ca.crt")
KUBELET_DIR = Path("/var/lib/kubelet")
CRI_SOCKET = "unix:///var/run/containerd/containerd.sock"
VERSION_ENV = "WORLDLAND_LAB_KUBERNETES_VERSION"
CONFIG_VERSIONS = ("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")
# the fields kubeadm's strict decoding accepts in a JoinConfiguration (v1beta4 adds dryRun and timeouts)
JOIN_FIELDS = {
    "apiVersion",
    "kind",
    "nodeRegistration",
    "caCertPath",
    "discovery",
    "controlPlane",
    "skipPhases",
    "patches",
}
JOIN_FIELDS_V1BETA4 = {"dryRun", "timeouts"}
DISCOVERY_FIELDS = {"bootstrapToken", "file", "tlsBootstrapToken"}  # v1beta3 adds timeout
BOOTSTRAP_TOKEN_FIELDS = {"token", "apiServerEndpoint", "caCertHashes", "unsafeSkipCAVerification"}
NODE_REGISTRATION_FIELDS = {
    "name",
    "criSocket",
    "taints",
    "kubeletExtraArgs",
    "ignorePreflightErrors",
    "imagePullPolicy",
    "imagePullSerial",
}
TIMEOUT_FIELDS = {
    "controlPlaneComponentHealthCheck",
    "kubeletHealthCheck",
    "kubernetesAPICall",
    "etcdAPICall",
    "tlsBootstrap",
    "discovery",
    "upgradeManifests",
}
# flags that may go with --config (kubeadm refuses to mix the others)
CONFIG_COMPATIBLE = {"config", "ignore-preflight-errors", "v", "skip-phases", "dry-run"}
VALUE_FLAGS = {
    "token",
    "discovery-token",
    "tls-bootstrap-token",
    "discovery-token-ca-cert-hash",
    "node-name",
    "config",
    "cri-socket",
    "ignore-preflight-errors",
    "v",
    "skip-phases",
    "apiserver-advertise-address",
    "apiserver-bind-port",
    "discovery-file",
    "o",
    "output",
}
BOOL_FLAGS = {"discovery-token-unsafe-skip-ca-verification", "dry-run", "force", "f", "control-plane"}


class Fail(Exception):
    """A kubeadm error: printed to stderr, exit status 1."""


def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    positional: list[str] = []
    flags: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            name, eq, val = arg.lstrip("-").partition("=")
            if name in VALUE_FLAGS and not eq:
                if i + 1 >= len(argv):
                    raise Fail(f"flag needs an argument: --{name}")
                val, i = argv[i + 1], i + 1
            elif name not in VALUE_FLAGS and name not in BOOL_FLAGS:
                raise Fail(f"unknown flag: --{name}")
            flags.setdefault(name, []).append(val if (eq or name in VALUE_FLAGS) else "true")
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def one(flags: dict[str, list[str]], name: str, default: str = "") -> str:
    return flags.get(name, [default])[-1]


# --- the cluster, through the lab's admin kubeconfig -------------------------------------------------


class Api:
    def __init__(self, endpoint: str, kubeconfig: dict[str, Any], kubeconfig_dir: Path) -> None:
        ctx_name = kubeconfig.get("current-context") or kubeconfig["contexts"][0]["name"]
        context = next(c["context"] for c in kubeconfig["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in kubeconfig["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in kubeconfig["users"] if u["name"] == context["user"])
        self.scheme = cluster["server"].split("://", 1)[0]
        if self.scheme not in ("https", "http"):
            raise Fail(f"lab: unsupported server URL in the kubeconfig: {cluster['server']!r}")
        self.base = f"{self.scheme}://{endpoint}"
        self.ca_pem = self._material(cluster, "certificate-authority", kubeconfig_dir)
        self.headers = {"Accept": "application/json", "User-Agent": "kubeadm/lab-stand-in"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        handlers: list[Any] = [urllib.request.ProxyHandler({})]  # never through a proxy: lab traffic only
        if self.scheme == "https":
            if not self.ca_pem:
                raise Fail(
                    "lab: the kubeconfig has no certificate-authority; the stand-in never skips TLS checks"
                )
            ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
            cert = self._material(user, "client-certificate", kubeconfig_dir)
            key = self._material(user, "client-key", kubeconfig_dir)
            if cert and key:
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "c").write_bytes(cert)
                    (Path(tmp) / "k").write_bytes(key)
                    ctx.load_cert_chain(str(Path(tmp) / "c"), str(Path(tmp) / "k"))
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self.opener = urllib.request.build_opener(*handlers)

    @staticmethod
    def _material(section: dict[str, Any], key: str, base: Path) -> bytes:
        if section.get(f"{key}-data"):
            return base64.b64decode(section[f"{key}-data"])
        if section.get(key):
            return (base / section[key]).read_bytes()
        return b""

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        url = self.base + path  # https:// or http://, never file: (self.scheme comes from the kubeconfig)
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with self.opener.open(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")) from None
        except (TimeoutError, urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise Fail(
                f'couldn\'t validate the identity of the API Server: Get "{self.base}{path}": {reason}'
            ) from None


class ApiError(Exception):
    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"{code}: {body}")
        self.code = code


def spki_hash(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def cluster_ca(api: Api) -> bytes:
    """The CA a real kubeadm would pin: the one in kube-public/cluster-info, else the lab's."""
    try:
        cm = api.call("GET", "/api/v1/namespaces/kube-public/configmaps/cluster-info")
    except ApiError as err:
        if err.code != 404:
            raise Fail(f"unable to fetch the kubeadm-config ConfigMap: {err}") from None
        return api.ca_pem
    import yaml

    info = yaml.safe_load(cm.get("data", {}).get("kubeconfig", "")) or {}
    clusters = info.get("clusters") or []
    data = clusters[0].get("cluster", {}).get("certificate-authority-data") if clusters else None
    return base64.b64decode(data) if data else api.ca_pem


def check_token(api: Api, token: str) -> None:
    token_id, secret = TOKEN_RE.match(token).groups()  # type: ignore[union-attr]
    invalid = Fail(
        "error execution phase preflight: couldn't validate the identity of the API Server: "
        f'token id "{token_id}" is invalid for this cluster or it has expired. '
        'Use "kubeadm token create" on the control-plane node to create a new valid token'
    )
    try:
        obj = api.call("GET", f"/api/v1/namespaces/kube-system/secrets/bootstrap-token-{token_id}")
    except ApiError as err:
        if err.code == 404:
            raise invalid from None
        raise Fail(f"couldn't validate the identity of the API Server: {err}") from None
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    if obj.get("type") != "bootstrap.kubernetes.io/token" or data.get("token-id", token_id) != token_id:
        raise invalid
    if not hmac.compare_digest(data.get("token-secret", ""), secret):
        raise invalid
    for usage in ("usage-bootstrap-authentication", "usage-bootstrap-signing"):
        if data.get(usage) != "true":
            raise invalid
    expiration = data.get("expiration")
    if expiration:
        when = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        if when <= dt.datetime.now(dt.UTC):
            raise invalid


def kubernetes_version(cfg: dict[str, Any]) -> str:
    """The kubeadm/kubelet version this host has: the lab-built package's, else the host config's."""
    return os.environ.get(VERSION_ENV) or cfg["kubernetes_version"]


def container_runtime_version() -> str:
    """``containerd://<version>`` of the containerd installed here (a kube-mode host has Debian's)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        if len(out) >= 3:  # containerd github.com/containerd/containerd 1.7.24~ds1 ...
            return f"containerd://{out[2]}"
    return "containerd://1.7.22"


def node_object(
    name: str, cfg: dict[str, Any], labels: dict[str, str], taints: list[Any], cri_socket: str = CRI_SOCKET
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    version = kubernetes_version(cfg)
    resources = {
        "cpu": str(cfg["cpu_cores"]),
        "memory": f"{cfg['memory_mb'] * 1024}Ki",
        "pods": "110",
        "ephemeral-storage": "102400000Ki",
    }
    if cfg["driver"] and cfg["gpus"]:
        resources["nvidia.com/gpu"] = str(len(cfg["gpus"]))
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                **labels,
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": cri_socket,
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "conditions": [condition],
            "addresses": [
                {"type": "InternalIP", "address": cfg["address"]},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "containerRuntimeVersion": container_runtime_version(),
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "Ubuntu 22.04.4 LTS",
                "kernelVersion": os.uname().release,
                "machineID": hashlib.md5(name.encode()).hexdigest(),  # noqa: S324 - an id
                "systemUUID": cfg["gpus"][0]["uuid"][4:]
                if cfg["gpus"]
                else "00000000-0000-0000-0000-000000000000",
                "bootID": "",
            },
        },
    }


def is_ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


def existing_node(api: Api, name: str) -> dict[str, Any] | None:
    """The Node of that name, if any; refuses (as kubeadm does) when it exists and is Ready."""
    try:
        existing = api.call("GET", f"/api/v1/nodes/{name}")
    except ApiError as err:
        if err.code != 404:
            raise Fail(f"unable to check for an existing Node {name!r}: {err}") from None
        return None
    if is_ready(existing):
        raise Fail(
            "error execution phase kubelet-start: "
            f'a Node with name "{name}" and status "Ready" already exists in '
            "the cluster. You must delete the existing Node or change the name of this new joining Node"
        )
    return existing


def register(api: Api, node: dict[str, Any], existing: dict[str, Any] | None) -> None:
    name = node["metadata"]["name"]
    if existing is None:
        try:
            created = api.call("POST", "/api/v1/nodes", node)
        except ApiError as err:
            raise Fail(
                f"error execution phase kubelet-start: the kubelet could not register Node {name!r}: {err}"
            ) from None
    else:
        created = existing
    status = created.get("status", {})
    if not is_ready(created) or status.get("allocatable") != node["status"]["allocatable"]:
        try:
            api.call(
                "PATCH",
                f"/api/v1/nodes/{name}/status",
                {"status": node["status"]},
                content_type="application/merge-patch+json",
            )
        except ApiError as err:
            raise Fail(
                f"error execution phase kubelet-start: could not update the status of Node {name!r}: {err}"
            ) from None


def write_files(endpoint: str, name: str, ca_pem: bytes, flags_env: str, dry_run: bool) -> None:
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {base64.b64encode(ca_pem).decode()}\n"
        f"    server: https://{endpoint}\n  name: default-cluster\n"
        "contexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n"
        "    user: default-auth\n  name: default-context\ncurrent-context: default-context\n"
        "preferences: {}\nusers:\n- name: default-auth\n  user:\n"
        "    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n"
        "    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n"
    )
    kubelet_config = (
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "authentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\n"
        "cgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\n"
        f"staticPodPath: /etc/kubernetes/manifests\n# node: {name}\n"
    )
    if dry_run:
        return
    for path, text in (
        (CA_CRT, ca_pem.decode()),
        (KUBELET_DIR / "config.yaml", kubelet_config),
        (KUBELET_DIR / "kubeadm-flags.env", flags_env),
        (KUBELET_CONF, kubeconfig),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    KUBELET_CONF.chmod(0o600)


# --- commands -----------------------------------------------------------------------------------------


def check_discovery(endpoint: str, token: str, hashes: list[str], skip: bool) -> None:
    """The discovery values as kubeadm validates them; never without a pinned CA."""
    if skip:
        raise Fail(
            "lab: refusing --discovery-token-unsafe-skip-ca-verification: "
            "a join must pin the cluster CA with "
            "--discovery-token-ca-cert-hash sha256:<hash> (WorldLand never joins without it)"
        )
    if not token:
        raise Fail('discovery.bootstrapToken.token: Invalid value: "": the bootstrap token is required')
    if not TOKEN_RE.match(token):
        raise Fail(
            f'discovery.bootstrapToken.token: Invalid value: "{token}": '
            f'the bootstrap token "{token}" was not of '
            'the form "[a-z0-9]{6}.[a-z0-9]{16}"'
        )
    if not hashes:
        raise Fail(
            'discovery.bootstrapToken: Invalid value: "": '
            "using token-based discovery without caCertHashes can be "
            "unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass "
            "--discovery-token-unsafe-skip-ca-verification flag to continue"
        )
    for h in hashes:
        if not isinstance(h, str) or not HASH_RE.match(h):
            raise Fail(
                f'discovery.bootstrapToken.caCertHashes: Invalid value: "{h}": '
                "invalid hash, want sha256:<64 hex>"
            )
    if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", endpoint):
        raise Fail(f'discovery.bootstrapToken.apiServerEndpoint: Invalid value: "{endpoint}": want HOST:PORT')


def join(cfg: dict[str, Any], positional: list[str], flags: dict[str, list[str]]) -> int:
    labels: dict[str, str] = {}
    taints: list[Any] = []
    cri_socket = one(flags, "cri-socket") or CRI_SOCKET
    ignored = {s.strip().lower() for v in flags.get("ignore-preflight-errors", []) for s in v.split(",")}
    if "config" in flags:
        mixed = sorted(set(flags) - CONFIG_COMPATIBLE) + (["endpoint"] if positional else [])
        if mixed:
            raise Fail(f"can not mix '--config' with arguments {mixed}")
        spec = read_join_config(one(flags, "config"))
        endpoint, token, hashes, skip = spec["endpoint"], spec["token"], spec["hashes"], spec["skip"]
        node_name, labels, taints = spec["node_name"], spec["labels"], spec["taints"]
        cri_socket = spec["cri_socket"] or CRI_SOCKET
        ignored |= {s.strip().lower() for s in spec["ignore_preflight_errors"]}
    else:
        if len(positional) != 1:
            raise Fail(
                "[discovery] Please provide exactly one API server endpoint: kubeadm join HOST:PORT ..."
            )
        endpoint = positional[0]
        token = one(flags, "discovery-token") or one(flags, "token")
        hashes = flags.get("discovery-token-ca-cert-hash", [])
        skip = "discovery-token-unsafe-skip-ca-verification" in flags
        node_name = one(flags, "node-name")
    check_discovery(endpoint, token, hashes, skip)
    name = (node_name or socket.gethostname()).lower()

    out = sys.stdout
    out.write("[preflight] Running pre-flight checks\n")
    problems = []
    if KUBELET_CONF.exists() and not ignored & {"all", "fileavailable--etc-kubernetes-kubelet.conf"}:
        problems.append(f"[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: {KUBELET_CONF} already exists")
    if CA_CRT.exists() and not ignored & {"all", "fileavailable--etc-kubernetes-pki-ca.crt"}:
        problems.append(f"[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]: {CA_CRT} already exists")
    with units(cfg) as state:
        _services.refresh(state)  # a unit whose process the systemctl stand-in started and that exited
        containerd_up = bool(state.get("containerd.service", {}).get("active"))
    if not containerd_up and not ignored & {"all", "cri"}:
        problems.append(
            f"[ERROR CRI]: container runtime is not running: output: validate service connection: "
            f'CRI v1 runtime API is not implemented for endpoint "{cri_socket}"'
        )
    if problems:
        raise Fail(
            "error execution phase preflight: [preflight] Some fatal errors occurred:\n\t"
            + "\n\t".join(problems)
            + "\n[preflight] If you know what you are doing, you can make a check non-fatal with "
            "`--ignore-preflight-errors=...`"
        )

    kube = cfg.get("kube") or {}
    if not kube.get("kubeconfig"):
        raise Fail("lab: this host has no Kubernetes API configured (Lab.attach(kubeconfig=...) sets one)")
    import yaml

    kubeconfig_path = Path(kube["kubeconfig"])
    api = Api(endpoint, yaml.safe_load(kubeconfig_path.read_text()), kubeconfig_path.parent)
    ca_pem = cluster_ca(api)
    if not ca_pem:
        raise Fail("lab: no cluster CA to pin (plain-HTTP server without a CA in its kubeconfig)")
    pin = spki_hash(ca_pem)
    if pin not in hashes:
        raise Fail(
            "error execution phase preflight: couldn't validate the identity of the API Server: "
            "cluster CA found "
            f'in cluster-info ConfigMap is invalid: none of the public keys "{pin}" are pinned'
        )
    check_token(api, token)
    out.write("[preflight] Reading configuration from the cluster...\n")
    dry_run = "dry-run" in flags
    flags_env = f'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint={cri_socket}'
    flags_env += " --pod-infra-container-image=registry.k8s.io/pause:3.10"
    if labels:
        flags_env += " --node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items())
    flags_env += '"\n'
    existing = existing_node(api, name)
    out.write('[kubelet-start] Writing kubelet configuration to file "/var/lib/kubelet/config.yaml"\n')
    out.write(
        "[kubelet-start] Writing kubelet environment file with flags to file "
        '"/var/lib/kubelet/kubeadm-flags.env"\n'
    )
    write_files(endpoint, name, ca_pem, flags_env, dry_run)
    out.write("[kubelet-start] Starting the kubelet\n")
    if not dry_run:
        kubelet_service(cfg, "restart")
    out.write("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap...\n")
    if not dry_run:
        register(api, node_object(name, cfg, labels, taints, cri_socket), existing)
    log(
        cfg,
        "kubeadm",
        action="join",
        endpoint=endpoint,
        token_id=token.split(".")[0],
        node_name=name,
        pin=pin,
    )
    out.write(
        "\nThis node has joined the cluster:\n"
        "* Certificate signing request was sent to apiserver and a response was received.\n"
        "* The Kubelet was informed of the new secure connection details.\n\n"
        "Run 'kubectl get nodes' on the control-plane to see this node join the cluster.\n\n"
    )
    return 0


def kubelet_service(cfg: dict[str, Any], verb: str) -> None:
    """Start (``restart``) or ``stop`` kubelet.service. A kube-mode host has the kubelet package's unit:
    the systemctl stand-in runs it for real, as kubeadm has systemd do. Elsewhere only its state is set."""
    if cfg.get("lab_mode") == "kube":
        systemctl = shutil.which("systemctl") or "systemctl"
        done = subprocess.run(
            [systemctl, verb, "kubelet"], capture_output=True, text=True, timeout=60, check=False
        )
        why = f"systemctl {verb} kubelet failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        if done.returncode != 0 and verb == "stop":  # kubeadm reset only warns
            sys.stderr.write(f"[reset] WARNING: {why}\n")
        elif done.returncode != 0:
            raise Fail(f"error execution phase kubelet-start: {why}")
        return
    with units(cfg) as state:
        unit = state.setdefault("kubelet.service", {})
        if verb == "stop":
            unit["active"] = False
        else:
            unit.update(active=True, pid=41000)
            unit["starts"] = unit.get("starts", 0) + 1


def _unknown_fields(where: str, section: Any, known: set[str]) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        raise Fail(f"strict decoding error: {where}: want an object, got {type(section).__name__}")
    unknown = sorted(set(section) - known)
    if unknown:
        raise Fail("strict decoding error: " + ", ".join(f'unknown field "{where}{k}"' for k in unknown))


def read_join_config(path: str) -> dict[str, Any]:
    """The ``JoinConfiguration`` in ``path``, decoded strictly (unknown fields refused, as kubeadm's
    decoder does), as the values a join uses."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise Fail(f"unable to read config from {path!r}: {err}") from None
    doc = next((d for d in docs if isinstance(d, dict) and d.get("kind") == "JoinConfiguration"), None)
    if doc is None:
        raise Fail(f"no JoinConfiguration found in {path!r}")
    api_version = doc.get("apiVersion")
    if api_version not in CONFIG_VERSIONS:
        raise Fail(f'no kind "JoinConfiguration" is registered for version "{api_version}"')
    v1beta4 = api_version.endswith("v1beta4")
    _unknown_fields("", doc, JOIN_FIELDS | (JOIN_FIELDS_V1BETA4 if v1beta4 else set()))
    discovery = doc.get("discovery") or {}
    _unknown_fields("discovery.", discovery, DISCOVERY_FIELDS | (set() if v1beta4 else {"timeout"}))
    disc = discovery.get("bootstrapToken") or {}
    _unknown_fields("discovery.bootstrapToken.", disc, BOOTSTRAP_TOKEN_FIELDS)
    _unknown_fields("timeouts.", doc.get("timeouts"), TIMEOUT_FIELDS)
    reg = doc.get("nodeRegistration") or {}
    _unknown_fields("nodeRegistration.", reg, NODE_REGISTRATION_FIELDS)
    extra = reg.get("kubeletExtraArgs") or ([] if v1beta4 else {})
    if v1beta4 != isinstance(extra, list):  # v1beta4: [{name, value}]; v1beta3: a map
        want = "a list of {name, value}" if v1beta4 else "a map"
        raise Fail(f"strict decoding error: nodeRegistration.kubeletExtraArgs: {api_version} wants {want}")
    if isinstance(extra, list):
        extra = {a["name"]: a["value"] for a in extra}
    labels = dict(kv.split("=", 1) for kv in extra.get("node-labels", "").split(",") if "=" in kv)
    hashes = disc.get("caCertHashes") or []
    return {
        "endpoint": str(disc.get("apiServerEndpoint", "")),
        "token": str(disc.get("token") or discovery.get("tlsBootstrapToken", "")),
        "hashes": list(hashes) if isinstance(hashes, list) else [hashes],
        "skip": bool(disc.get("unsafeSkipCAVerification")),
        "node_name": str(reg.get("name", "")),
        "cri_socket": str(reg.get("criSocket") or ""),
        "labels": labels,
        "taints": list(reg.get("taints") or []),
        "ignore_preflight_errors": [str(e) for e in reg.get("ignorePreflightErrors") or []],
    }


def config_command(positional: list[str], flags: dict[str, list[str]]) -> int:
    """``kubeadm config validate --config FILE``: the file read as a join reads it; ``ok`` when it holds."""
    if positional != ["validate"]:
        raise Fail(
            f'unknown command "config {" ".join(positional)}" (the lab stand-in knows config validate)'
        )
    if "config" not in flags:
        raise Fail('required flag(s) "config" not set')
    spec = read_join_config(one(flags, "config"))
    check_discovery(spec["endpoint"], spec["token"], spec["hashes"], spec["skip"])
    sys.stdout.write("ok\n")
    return 0


def reset(cfg: dict[str, Any], flags: dict[str, list[str]]) -> int:
    if "force" not in flags and "f" not in flags:
        sys.stdout.write("[reset] Are you sure you want to proceed? [y/N]: ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise Fail("aborted reset operation")
    out = sys.stdout
    out.write("[preflight] Running pre-flight checks\n[reset] Stopping the kubelet service\n")
    with units(cfg) as state:
        known = "kubelet.service" in state
    if known or cfg.get("lab_mode") == "kube":
        kubelet_service(cfg, "stop")
    dirs = [Path("/etc/kubernetes/manifests"), KUBELET_DIR, Path("/etc/kubernetes/pki")]
    out.write(f"[reset] Deleting contents of directories: {[str(d) for d in dirs]}\n")
    for d in dirs:
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    files = [Path("/etc/kubernetes") / f for f in ("admin.conf", "kubelet.conf", "bootstrap-kubelet.conf")]
    out.write(f"[reset] Deleting files: {[str(f) for f in files]}\n")
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    out.write(
        "\nThe reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d\n"
    )
    log(cfg, "kubeadm", action="reset")
    return 0


def version(cfg: dict[str, Any], flags: dict[str, list[str]]) -> int:
    ver = kubernetes_version(cfg)
    major, minor = ver.lstrip("v").split(".")[:2]
    info = {
        "major": major,
        "minor": minor,
        "gitVersion": ver,
        "gitTreeState": "clean",
        "goVersion": "go1.22.8",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
    fmt = one(flags, "o") or one(flags, "output")
    if fmt == "short":
        sys.stdout.write(ver + "\n")
    elif fmt == "json":
        sys.stdout.write(json.dumps({"clientVersion": info}, indent=2) + "\n")
    elif fmt == "yaml":
        sys.stdout.write("clientVersion:\n" + "".join(f"  {k}: {v}\n" for k, v in info.items()))
    elif not fmt:
        fields = ", ".join(f'{k[0].upper() + k[1:]}:"{v}"' for k, v in info.items())
        sys.stdout.write(f"kubeadm version: &version.Info{{{fields}}}\n")
    else:
        raise Fail(f'invalid output format: "{fmt}"')
    return 0


def main(argv: list[str]) -> int:
    cfg = config()
    try:
        positional, flags = parse(argv)
        if not positional:
            sys.stdout.write(
                "Usage:\n  kubeadm [command]\n\nAvailable Commands: config, join, reset, version\n"
            )
            return 0
        command, rest = positional[0], positional[1:]
        if command == "join":
            return join(cfg, rest, flags)
        if command == "config":
            return config_command(rest, flags)
        if command == "reset":
            return reset(cfg, flags)
        if command == "version":
            return version(cfg, flags)
        known = "config, join, reset, version"
        raise Fail(f'unknown command "{command}" for "kubeadm" (the lab stand-in knows {known})')
    except Fail as err:
        redacted = [re.sub(r"\b([a-z0-9]{6})\.[a-z0-9]{16}\b", r"\1.<redacted>", a) for a in argv]
        log(cfg, "kubeadm", argv=redacted, error=str(err))
        sys.stderr.write(f"{err}\nTo see the stack trace of this error execute with --v=5 or higher\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``deploy/systemd`` and ``deploy/kubernetes`` checked without running them: the units parse, carry the
hardening and start a real ``worldland`` subcommand with options it accepts; ``systemd-analyze verify``
and ``security --offline`` (where this machine has them; systemd does not run here) find nothing wrong;
the Kubernetes workloads run unprivileged with a read-only root; the RBAC rules grant exactly the
(resource, verb) pairs ``worldland/kube/`` calls. ``tests/test_rbac_realkube.py`` applies them to a real
API server."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worldland.cli.main import main as worldland_cli
from worldland.domain.device_plugin import DEVICE_PLUGIN_NAME, DEVICE_PLUGIN_NAMESPACE
from worldland.domain.join import IN_CLUSTER
from worldland.domain.policy import ApprovalPolicy
from worldland.kube.session import KUBECONFIG_ENV
from worldland.kube.tokens import TOKEN_NAMESPACE
from worldland.state.connection import KEY_PREFIX_ENV, REDIS_URL_ENV

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"
KUBERNETES = REPO / "deploy" / "kubernetes"
WORLDLAND = Path(sys.executable).parent / "worldland"
SERVICES = ("worldland-listener.service", "worldland-audit.service")


# -- systemd -----------------------------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each with every value it was given, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and not line.endswith("\\"), f"{path.name}:{number}: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "User": "worldland",
    "Group": "worldland",
}


@pytest.mark.parametrize("name", SERVICES)
def test_the_services_are_hardened_and_run_as_their_own_user(name) -> None:
    unit = parse_unit(SYSTEMD / name)
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    environment_file = one(unit, "Service", "EnvironmentFile")
    assert re.fullmatch(r"/etc/worldland/[a-z]+\.env", environment_file)
    example = SYSTEMD / f"{Path(environment_file).stem}.env.example"
    settings = dict(line.split("=", 1) for line in example.read_text().splitlines() if line[:1].isalpha())
    # the variables the commands read (worldland.state.connection, worldland.kube.session)
    assert set(settings) == {REDIS_URL_ENV, KEY_PREFIX_ENV, KUBECONFIG_ENV}
    assert "network-online.target" in one(unit, "Unit", "After")


def test_the_listener_restarts_on_failure_and_the_audit_is_a_timed_oneshot() -> None:
    listener = parse_unit(SYSTEMD / "worldland-listener.service")
    assert one(listener, "Service", "Restart") == "on-failure"
    assert one(listener, "Service", "KillSignal") == "SIGTERM"  # the listener finishes its batch on it
    assert one(listener, "Install", "WantedBy") == "multi-user.target"
    base, onboarding = exec_start(SERVICES[0]), exec_start(DROP_INS[0])
    assert onboarding[: len(base)] == base and "--onboard" in onboarding[len(base) :]  # the unit's, plus
    audit = parse_unit(SYSTEMD / "worldland-audit.service")
    assert one(audit, "Service", "Type") == "oneshot" and "Install" not in audit  # started by the timer
    assert int(one(audit, "Service", "TimeoutStartSec")) < 300  # below the audit's lock_ttl
    timer = parse_unit(SYSTEMD / "worldland-audit.timer")
    assert one(timer, "Timer", "Unit") == "worldland-audit.service"
    assert one(timer, "Timer", "OnCalendar") == "minutely"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def exec_start(name: str) -> list[str]:
    """The command line a unit (or a drop-in: its last ExecStart, after the empty one) starts."""
    values = parse_unit(SYSTEMD / name)["Service"]["ExecStart"]
    assert values[:-1] in ([], [""]), values  # a drop-in first clears the unit's own
    argv = shlex.split(values[-1])
    assert argv[0] == "/opt/worldland/venv/bin/worldland", argv
    return argv[1:]


def kube_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") != "Kustomization":
                objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def workloads() -> list[tuple[str, dict[str, Any]]]:
    """(object name, container) for each container of the Deployment and CronJob."""
    out = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj["kind"] in ("Deployment", "CronJob"):
                out += [(obj["metadata"]["name"], c) for c in pod_spec(obj)["containers"]]
    return out


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    template = (
        obj["spec"]["template"]
        if obj["kind"] == "Deployment"
        else obj["spec"]["jobTemplate"]["spec"]["template"]
    )
    spec: dict[str, Any] = template["spec"]
    return spec


def container_args(container: dict[str, Any]) -> list[str]:
    """The container's command line, ``$(VAR)`` expanded as the kubelet does from its literal env."""
    assert container["command"] == ["worldland"]
    data = kube_objects()[("ConfigMap", "worldland-config")]["data"]
    values = {
        e["name"]: e["value"] if "value" in e else data[e["valueFrom"]["configMapKeyRef"]["key"]]
        for e in container.get("env", [])
        if "value" in e or "configMapKeyRef" in e.get("valueFrom", {})
    }
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg) for arg in container["args"]]


DROP_INS = ("worldland-listener.service.d/onboard.conf",)
COMMAND_LINES = [(name, exec_start(name)) for name in (*SERVICES, *DROP_INS)] + [
    (name, container_args(container)) for name, container in workloads()
]


@pytest.mark.parametrize(("where", "args"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_each_command_line_is_a_worldland_subcommand_with_options_it_accepts(where, args, tmp_path) -> None:
    command = worldland_cli.commands.get(args[0])
    assert isinstance(command, click.Command), f"{where}: no subcommand {args[0]!r}"
    # the installed command accepts every option (an unknown one fails even with --help) ...
    run = subprocess.run(
        [str(WORLDLAND), *args, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, f"{where}: {run.stderr}"
    # ... and every value converts: files the unit names stand in as real ones here
    (tmp_path / "policy.yml").write_text("mode: manual\n")
    local = [
        re.sub(
            r"^(--[a-z-]+=)?/etc/worldland/.*", lambda m: (m.group(1) or "") + str(tmp_path / "policy.yml"), a
        )
        for a in args[1:]
    ]
    command.make_context(args[0], local)


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"no {name} on this machine: the units were only parsed")
    return path


@pytest.fixture
def units_here(tmp_path) -> Path:
    """The units with ExecStart pointing at this checkout's worldland (verify checks the binary exists)."""
    for path in [
        *SYSTEMD.glob("worldland-*.service"),
        *SYSTEMD.glob("worldland-*.timer"),
        *SYSTEMD.glob("*.d/*"),
    ]:
        text = path.read_text().replace("/opt/worldland/venv/bin/worldland", str(WORLDLAND))
        (tmp_path / path.relative_to(SYSTEMD)).parent.mkdir(exist_ok=True)
        (tmp_path / path.relative_to(SYSTEMD)).write_text(text)
    return tmp_path


def test_systemd_analyze_verify_accepts_the_units(units_here) -> None:
    analyze = systemd_tool("systemd-analyze")
    units = sorted(str(p) for p in units_here.iterdir() if p.is_file())
    assert len(units) == 3
    # the scratch directory first on the unit path: its drop-in (onboard.conf) is read with the unit
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units_here}:"}
    run = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert run.returncode == 0 and run.stderr == "" and run.stdout == "", run.stdout + run.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_security_rates_the_services_ok(units_here, name) -> None:
    analyze = systemd_tool("systemd-analyze")
    run = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(units_here / name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", run.stdout)
    assert match, run.stdout + run.stderr
    assert float(match.group(1)) <= 2.0 and match.group(2) == "OK", match.group(0)


def test_the_sysusers_file_makes_the_services_user(tmp_path) -> None:
    sysusers = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    run = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "worldland.sysusers")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    entry = next(
        line
        for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
        if line.startswith("worldland:")
    )
    _name, _, uid, _gid, _gecos, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/worldland" and shell == "/usr/sbin/nologin"  # a system user
    # the listener's state directory is that home (ansible-runner's HOME with --onboard)
    listener = parse_unit(SYSTEMD / "worldland-listener.service")
    assert "/var/lib/" + one(listener, "Service", "StateDirectory") == home


# -- Kubernetes --------------------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


@pytest.mark.parametrize(("where", "container"), workloads(), ids=[w for w, _ in workloads()])
def test_the_workloads_run_unprivileged_with_a_read_only_root(where, container) -> None:
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts and all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    env = {e["name"]: e for e in container["env"]}
    assert env[REDIS_URL_ENV]["valueFrom"]["secretKeyRef"] == {"name": "worldland-redis", "key": "url"}
    assert env[KUBECONFIG_ENV]["value"] == IN_CLUSTER  # the token is followed as the kubelet rotates it


def test_the_pods_use_their_own_accounts_and_the_restricted_profile() -> None:
    objects = kube_objects()
    assert (
        objects[("Namespace", "worldland")]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )
    listener = pod_spec(objects[("Deployment", "worldland-listener")])
    audit = pod_spec(objects[("CronJob", "worldland-audit")])
    assert listener["serviceAccountName"] == "worldland" and audit["serviceAccountName"] == "worldland-audit"
    for spec in (listener, audit):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    cronjob = objects[("CronJob", "worldland-audit")]["spec"]
    assert (
        cronjob["concurrencyPolicy"] == "Forbid"
        and cronjob["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 300
    )


def test_the_configmap_holds_a_valid_policy() -> None:
    data = kube_objects()[("ConfigMap", "worldland-config")]["data"]
    policy = ApprovalPolicy.from_yaml(data["policy.yml"], source="deploy/kubernetes/config.yaml")
    assert policy.mode.value == "manual" and "kubeconfig" not in data  # the pods use in-cluster


# -- RBAC: exactly the calls the code makes -------------------------------------------------------------


def literals(node: ast.expr) -> list[str]:
    """The strings an argument can be: a literal, or either branch of ``a if cond else b``."""
    if isinstance(node, ast.IfExp):
        return literals(node.body) + literals(node.orelse)
    value = ast.literal_eval(node)  # anything else computed would need reading by hand: fail
    assert isinstance(value, str), ast.dump(node)
    return [value]


def calls_in_the_code() -> set[tuple[str, str]]:
    """(resource, verb) of every ``_call``/``_list`` in worldland/kube/ (``"dry-run patch"`` is a patch)."""
    found: set[tuple[str, str]] = set()
    for path in sorted((REPO / "worldland" / "kube").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr == "_call" and not isinstance(
                node.args[2], ast.Name
            ):  # not _list's page request
                found |= {
                    (resource, verb.removeprefix("dry-run "))
                    for verb in literals(node.args[1])
                    for resource in literals(node.args[2])
                }
            elif node.func.attr == "_list" and isinstance(node.args[1], ast.Constant):
                found |= {(resource, "list") for resource in literals(node.args[1])}
    return found


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(resource, verb) for rule in rules for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_roles_grant_exactly_the_calls_of_worldland_kube() -> None:
    objects = kube_objects()
    role, cluster_role = objects[("Role", "worldland")], objects[("ClusterRole", "worldland")]
    assert role["metadata"]["namespace"] == TOKEN_NAMESPACE == DEVICE_PLUGIN_NAMESPACE
    code = calls_in_the_code()
    assert ("secrets", "create") in code and ("pods/eviction", "create") in code  # the scan sees the calls
    rules = granted(role["rules"]) | granted(cluster_role["rules"])
    # cluster-info is read only by ClusterInfo.join_info("cluster-info"), which nothing of the control plane
    # calls (the CA hash comes from the kubeconfig's CA); a server-side apply that creates the DaemonSet
    # needs create besides patch.
    assert code - rules == {("configmaps", "get")}
    assert rules - code == {("daemonsets", "create")}
    callers = [REPO / "worldland" / d for d in ("control", "cli")] + [REPO / "plugins"]
    assert not [p for d in callers for p in d.rglob("*.py") if "cluster-info" in p.read_text()]
    daemonsets = next(r for r in role["rules"] if r["resources"] == ["daemonsets"])
    assert daemonsets["resourceNames"] == [DEVICE_PLUGIN_NAME] and daemonsets["apiGroups"] == ["apps"]


def test_the_audit_account_may_only_label_and_taint_nodes() -> None:
    objects = kube_objects()
    assert granted(objects[("ClusterRole", "worldland-audit")]["rules"]) == {
        ("nodes", "get"),
        ("nodes", "list"),
        ("nodes", "patch"),
    }
    assert not [
        o for (kind, _), o in objects.items() if kind == "Role" and o["metadata"]["name"] == "worldland-audit"
    ]


def test_each_binding_names_its_own_role_and_account() -> None:
    objects = kube_objects()
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for (k, name), binding in objects.items():
            if k != kind:
                continue
            assert binding["roleRef"]["name"] == name and binding["roleRef"]["kind"] == kind.removesuffix(
                "Binding"
            )
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "worldland"}]
            assert ("ServiceAccount", name) in objects

"""The demo's phases: what a newcomer sees the product do, end to end, on lab hosts on this machine.

Each phase is a method of ``Demo`` listed in ``PHASES`` with a title and what it stands in for in a real
deployment. A phase raises ``DemoError`` (a sentence for the operator) when it does not get what it needs;
``demo.main`` then names the phase, tears everything down and exits 1. Everything is done the way an
operator does it: ``ansible-playbook playbooks/install_agent.yml``, ``worldland listen``, ``worldland
onboard``, ``worldland allocate/release/mining``, ``worldland audit``, ``worldland status``; the demo only
reads Redis, the Kubernetes API and Prometheus's API to show what happened.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table
from rich.text import Text

from demo import agents
from demo.agents import AGENT_LOG, AGENT_UNIT, BIN, REPO
from demo.children import Children, DemoError
from demo.helpers import ansible_failure, free_port, recap, since, wait_until
from demo.report import INDENT, Reporter, plain

# the GPUs each host pretends to have, cycled over the hosts (tests/lab/gpus.py spells them)
GPU_PLAN = ("RTX-4090:2", "A100:1", "H100:2")
RULES = REPO / "deploy" / "prometheus" / "worldland-rules.yml"
TOKEN_TTL_MIN = 30  # the listener's default --token-ttl
AUDIT_REPORT_KEYS = {"newly_offline": "marked Offline", "recovered": "recovered", "synced": "node written"}


@dataclass(frozen=True)
class Settings:
    hosts: int = 3
    wheelhouse: Path | None = None  # None: built from this checkout for the hosts' Python
    heartbeat_interval: float = 2.0  # the agents' (production: 30 s)
    stale_after: float = 10.0  # the audit's threshold (production: 120 s)
    audit_every: float = 5.0  # the audit's schedule (production: cron, every minute)
    reconcile_interval: float = 2.0  # the listener's (production: 10 s)
    keep_logs: Path | None = None  # where the logs go before teardown (None: they go with the rest)


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    stands_in_for: str
    run: Callable[[Demo], None]


@dataclass
class Demo:
    settings: Settings
    report: Reporter
    workdir: Path
    children: Children = field(default_factory=Children)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    timings: dict[str, float] = field(default_factory=dict)
    # filled in as the phases go
    env: Any = None  # tests.lab.onboarding.OnboardingLab
    fleet: Any = None  # worldland.state.fleet.Fleet, reading the lab's Redis
    prometheus: Any = None  # testkit.prometheus.PrometheusServer
    listener: subprocess.Popen[str] | None = None
    metrics_port: int = 0
    providers: dict[str, str] = field(default_factory=dict)  # host name -> provider id
    offline_alert: str = ""

    # -- what the phases share -----------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Any]:
        return list(self.env.lab.hosts)

    def command_env(self) -> dict[str, str]:
        """What the demo's commands run with: the lab's Redis, key prefix and kubeconfig, Ansible's files in
        the demo's directory, no colour (their output is shown through the demo's own display)."""
        return {
            **self.env.env,
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            # one SSH round trip per task instead of three or four (root logins, no sudo requiretty)
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PY_COLORS": "0",
            "COLUMNS": str(max(self.report.console.width, 100)),
        }

    def worldland(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """One ``worldland`` command (the installed CLI, as an operator runs it)."""
        what = shlex.join(["worldland", *args[:1]])
        argv = [str(BIN / "worldland"), *args]
        return self.children.run(argv, timeout=timeout, what=what, env=self.command_env(), cwd=REPO)

    def provider_of(self, host: Any) -> str:
        return self.providers[host.name]

    def record(self, host: Any) -> Any:
        return self.fleet.store.require(self.provider_of(host))

    def records(self) -> dict[str, Any]:
        """Host name -> its provider's record, for the hosts whose registration is stored (one read)."""
        by_id = {
            r.provider_id: r for r in self.fleet.store.get_many([self.provider_of(h) for h in self.hosts])
        }
        return {h.name: by_id[self.provider_of(h)] for h in self.hosts if self.provider_of(h) in by_id}

    def statuses(self) -> dict[str, str]:
        """Each host's provider status ("unknown" until the listener has stored its registration)."""
        records = self.records()
        return {h.name: records[h.name].status.value if h.name in records else "unknown" for h in self.hosts}

    def listener_log(self, lines: int = 6) -> str:
        path = self.workdir / "listener.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    @contextlib.contextmanager
    def kube_api(self) -> Iterator[Any]:
        """The official client's CoreV1Api, as the cluster's admin (what the demo shows it reads with)."""
        from kubernetes import client as k8s
        from kubernetes import config as kube_config

        kubeconfig = getattr(self.env, "admin_kubeconfig", None) or self.env.kubeconfig
        api = kube_config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]  # the kubernetes client has no type hints
        try:
            yield k8s.CoreV1Api(api)
        finally:
            api.close()

    def node(self, host: Any) -> Any:
        with self.kube_api() as core:
            return core.read_node(self.record(host).node_name)

    def status_table(self) -> str:
        proc = self.worldland("status")
        if proc.returncode != 0:
            raise DemoError(f"worldland status failed: {proc.stderr.strip()}")
        return proc.stdout.rstrip()

    def save_logs(self) -> None:
        """The demo's logs (listener, onboarding runs, agents, Prometheus) into ``settings.keep_logs``."""
        target = self.settings.keep_logs
        if target is None:
            return
        target.mkdir(parents=True, exist_ok=True)
        for path in self.workdir.iterdir():
            if path.is_file() and path.suffix in (".log", ".json", ".yml"):
                shutil.copy2(path, target)
        if (self.workdir / "runs").is_dir():
            shutil.copytree(self.workdir / "runs", target / "runs", dirs_exist_ok=True, symlinks=True)
        if self.prometheus is not None and self.prometheus.workdir is not None:
            with contextlib.suppress(OSError):
                shutil.copy2(self.prometheus.workdir / "prometheus.log", target)
        for host in self.hosts if self.env is not None else []:
            with contextlib.suppress(OSError):
                shutil.copy2(host.private_path(AGENT_LOG), target / f"agent-{host.name}.log")

    # -- 1. the lab ----------------------------------------------------------------------------------------

    def lab(self) -> None:
        from tests.lab.onboarding import OnboardingLab

        r = self.report
        plan = [GPU_PLAN[i % len(GPU_PLAN)] for i in range(self.settings.hosts)]
        r.activity(f"starting Redis, the control plane and {self.settings.hosts} lab hosts")
        lab = OnboardingLab(hosts=self.settings.hosts, gpus=plan, dir=self.workdir / "lab")
        self.env = env = self.stack.enter_context(lab)
        self.fleet = env.fleet()
        self.stack.callback(self.fleet.client.close)
        gateway = env.lab.gateway
        r.step(f"Redis: {env.redis.url} (the hosts reach it at {env.redis.url_at(gateway)})")
        r.step(f"Kubernetes: {env.kube_description}, API at {env.kube.url_for(gateway)}")
        r.step(f"  {self.control_plane_meaning()}")
        r.step(
            f"the listener, the audit and worldland onboard use {env.kubeconfig.name}: "
            f"{env.kubeconfig_identity}; the demo reads the API as admin"
        )
        r.step(
            f"package mirror: {env.served.url}, a signed apt repository (kubelet/kubeadm: "
            f"{env.repo.kube_binaries})"
        )
        for host in self.hosts:
            r.step(
                f"provider host {host.name} at {host.address}: GPUs {host.gpus}; its own sshd, /etc, "
                "/usr, /var"
            )
        if env.lab.inotify_limit is not None:
            r.step(
                f"fs.inotify.max_user_instances raised to {env.lab.inotify_limit} for {self.settings.hosts} "
                "kubelets on one machine (one per host: they share root's limit); put back at the end"
            )
        self.metrics_port = free_port()
        self.start_prometheus()

    def control_plane_meaning(self) -> str:
        """What the cluster the lab got means for what the demo shows."""
        from tests.lab.aptrepo import STANDIN_KUBE

        env = self.env
        if env.kube_real and env.repo.kube_binaries != STANDIN_KUBE:
            return (
                "a real kube-apiserver with its controller manager: each host's real kubelet joins with "
                "kubeadm and registers its Node, which turns Ready; the device-plugin stand-in serves GPUs"
            )
        if env.kube_real:
            return (
                "a real kube-apiserver, but no kubelet binary in ../shared/kube: the kubeadm stand-in checks "
                "the token and pinned CA and registers each Node itself, Ready with the host's GPUs"
            )
        return (
            "the test server stores Nodes, Secrets and ConfigMaps and checks bootstrap tokens, but runs no "
            "controllers and no kubelet joins it: the kubeadm stand-in (in the lab's kubeadm package) checks "
            "the token and the pinned CA, then registers each Node, Ready with the host's (stand-in) GPUs as "
            "nvidia.com/gpu allocatable; with ../shared/kube a real kubelet joins instead"
        )

    def start_prometheus(self) -> None:
        from testkit import prometheus

        if not RULES.is_file():
            raise DemoError(f"the alert rules {RULES.relative_to(REPO)} are missing")
        rules = self.demo_rules()
        self.report.activity("starting Prometheus")
        target = f"127.0.0.1:{self.metrics_port}"
        try:
            server = prometheus.PrometheusServer([target], rule_files=[rules])
            self.prometheus = self.stack.enter_context(server)
            version = prometheus.version()
        except prometheus.PrometheusError as exc:
            raise DemoError(f"Prometheus did not start: {exc}") from None
        self.report.step(
            f"Prometheus {version} (Debian's package) at {self.prometheus.url}: scrapes the listener's "
            f"metrics at {target} every {self.prometheus.interval:g} s, rules {RULES.relative_to(REPO)}"
        )

    def demo_rules(self) -> Path:
        """The project's rules; a copy with the offline alert's ``for:`` shortened when it would make the
        demo wait (said in the output)."""
        data = yaml.safe_load(RULES.read_text())
        shortened = []
        for group in data.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert", "")
                if name and "offline" in name.lower():
                    self.offline_alert = self.offline_alert or name
                    if rule.get("for") not in (None, "0s", "0m"):
                        shortened.append(f"{name} for: {rule['for']} -> 5s")
                        rule["for"] = "5s"
        if not self.offline_alert:
            raise DemoError(f"{RULES.relative_to(REPO)} has no alert for offline providers")
        if not shortened:
            return RULES
        path = self.workdir / "worldland-rules.demo.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.report.step("for the demo: " + ", ".join(shortened))
        return path

    # -- 2. the agents -------------------------------------------------------------------------------------

    def agents(self) -> None:
        from testkit.realkube import cache_dir

        r = self.report
        wheelhouse = self.settings.wheelhouse
        if wheelhouse is None:
            r.activity("building the agent's wheelhouse (pip wheel)")
            started = time.monotonic()
            wheelhouse = self.workdir / "wheelhouse"
            count, cached = agents.build_wheelhouse(
                self.children, wheelhouse, cache_dir() / "demo-wheelhouse"
            )
            how = "its dependencies from the cache" if cached else "its dependencies fetched by pip"
            r.step(
                f"wheelhouse: worldland built from this checkout, {how}: {count} wheels ({since(started)})"
            )
        for host in self.hosts:
            agents.give_agent_the_driver(host)
        r.step(
            f"each agent sees its host's GPUs through the lab's nvidia-smi, on its PATH only "
            f"({agents.LAB_DRIVER_BIN})"
        )
        inventory = agents.write_inventory(
            self.workdir / "agents.yml", self.env, wheelhouse, self.settings.heartbeat_interval
        )
        r.activity(f"ansible-playbook playbooks/install_agent.yml on {len(self.hosts)} hosts")
        started = time.monotonic()
        argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/install_agent.yml"]
        proc = self.children.run(
            argv, timeout=600, what="install_agent.yml", env=self.command_env(), cwd=REPO
        )
        if proc.returncode != 0:
            raise DemoError(
                f"install_agent.yml failed (rc {proc.returncode}): {ansible_failure(proc.stdout)}"
            )
        counts = ", ".join(
            f"{host} ok={c.get('ok', 0)} changed={c.get('changed', 0)}"
            for host, c in sorted(recap(proc.stdout).items())
        )
        r.step(f"$ ansible-playbook -i agents.yml playbooks/install_agent.yml: {counts} ({since(started)})")
        r.activity("waiting for each agent's registration")
        names = [h.name for h in self.hosts]
        try:
            found = wait_until(lambda: agents.registrations(self.fleet.client, names), 90, "every agent")
        except DemoError as exc:
            raise DemoError(f"{exc}: {'; '.join(agents.agent_log(h) for h in self.hosts)}") from None
        for host in self.hosts:
            message = found[host.name]
            self.providers[host.name] = str(message.get("provider_id"))
            r.step(
                f"{host.name}: its agent found {agents.gpus_found(message)} and registered as provider "
                f"{message.get('provider_id')}"
            )

    # -- 3. approval ---------------------------------------------------------------------------------------

    def approval(self) -> None:
        from worldland.domain.names import canonical_gpu_model

        r = self.report
        env = self.env
        models = sorted({canonical_gpu_model(m.name) for h in self.hosts for m in h.gpus.models})
        policy = {
            "mode": "auto",
            "allow_private_ips": True,
            "allowed_gpu_models": models,
            "min_gpus": 1,
            "max_gpu_price_per_hour": 10.0,
        }
        path = self.workdir / "policy.yml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        r.step("the demo's approval policy, policy.yml:")
        r.step("\n".join(f"    {line}" for line in path.read_text().splitlines()))
        r.step("(allow_private_ips: the lab's addresses are private; a fleet on the internet keeps it false)")
        argv = [
            str(BIN / "worldland"),
            "listen",
            "--policy",
            str(path),
            "--kubeconfig",
            str(env.kubeconfig),
            "--metrics-port",
            str(self.metrics_port),
            "--reconcile-interval",
            f"{self.settings.reconcile_interval:g}",
        ]
        r.activity("starting the listener")
        log = self.workdir / "listener.log"
        self.listener = self.children.start(argv, env=self.command_env(), cwd=REPO, log=log)
        wait_until(self.metrics_up, 30, f"the listener's metrics on 127.0.0.1:{self.metrics_port}")
        r.step(
            f"$ worldland listen --policy policy.yml --kubeconfig {env.kubeconfig.name} --metrics-port "
            f"{self.metrics_port} --reconcile-interval {self.settings.reconcile_interval:g}  "
            f"(pid {self.listener.pid})"
        )
        r.activity("waiting for the listener to answer every registration")
        wait_until(self.all_approved, 60, "every provider to be approved")
        for host in self.hosts:
            record = self.record(host)
            answer = self.answer(self.provider_of(host))
            minutes = (
                f"{(record.token_expires_at - time.time()) / 60:.0f}" if record.token_expires_at else "?"
            )
            token = "issued, never shown" if answer.get("join_token") else "none"
            r.step(
                f"{host.name}: answered {answer.get('status')} as node {answer.get('node_name')}; join token "
                f"{token}, expires in {minutes} min; "
                f"API {answer.get('master_ip')}:{answer.get('master_port')}, "
                f"CA pinned {str(answer.get('ca_hash', ''))[:19]}..."
            )
        with self.kube_api() as core:
            tokens = core.list_namespaced_secret(
                "kube-system", field_selector="type=bootstrap.kubernetes.io/token"
            )
        r.step(
            f"kube-system holds {len(tokens.items)} bootstrap-token Secret(s), one per provider, expiring "
            f"after {TOKEN_TTL_MIN} min (kubeadm's own default: 24 h)"
        )

    def metrics_up(self) -> bool:
        if self.listener is not None and self.listener.poll() is not None:
            raise DemoError(f"the listener exited ({self.listener.returncode}): {self.listener_log()}")
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def all_approved(self) -> bool:
        records = self.records()
        refused = {h: r.status_reason for h, r in records.items() if r.status.value == "rejected"}
        if refused:
            raise DemoError(f"the policy rejected providers: {refused}")
        return len(records) == len(self.hosts) and {r.status.value for r in records.values()} == {"approved"}

    def answer(self, provider_id: str) -> dict[str, Any]:
        """The newest answer on the provider's response stream (what its agent read)."""
        from worldland.protocol.streams import StreamNames

        entries = self.fleet.client.xrevrange(StreamNames().response(provider_id), count=1)
        if not entries:
            return {}
        fields = entries[0][1]
        data: dict[str, Any] = json.loads(fields.get(b"data") or fields.get("data") or "{}")
        return data

    # -- 4. onboarding -------------------------------------------------------------------------------------

    def onboarding(self) -> None:
        r = self.report
        env = self.env
        argv = [
            str(BIN / "worldland"),
            "onboard",
            "--inventory",
            str(env.inventory),
            "--json",
            "--runs-dir",
            str(self.workdir / "runs"),
            "--ansible-config",
            str(REPO / "ansible.cfg"),
        ]
        r.step(
            "$ worldland onboard --inventory inventory/  (ansible-runner, playbooks/onboard.yml: NVIDIA "
            "driver, containerd and the NVIDIA runtime, kubelet and kubeadm, kubeadm join, node labels)"
        )
        r.step(
            "(the inventory is the worldland plugin on the lab's Redis: the Approved providers, reached at "
            "their public_ip; its group_vars point the roles at the lab's mirror)"
        )
        started = time.monotonic()
        seen = self.statuses()
        r.step("providers: " + ", ".join(f"{host} {status}" for host, status in seen.items()))

        def follow() -> bool:
            """Say each status change; True once every provider is Available."""
            nonlocal seen
            now = self.statuses()
            for host, status in now.items():
                if status != seen.get(host):
                    r.step(f"{host}: {seen.get(host)} -> {status} ({time.monotonic() - started:.0f} s)")
            seen = now
            counts = {s: list(now.values()).count(s) for s in dict.fromkeys(now.values())}
            r.activity(
                f"onboard.yml on {len(now)} hosts: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            )
            return set(now.values()) == {"available"}

        # A host that fails stays Approved with its error recorded, and the next run retries it (what
        # `worldland listen --onboard` does): the demo allows one such retry, and says so.
        for attempt in (1, 2):
            result_file = self.workdir / f"onboard-{attempt}.json"
            proc = self.children.start(
                argv, env=self.command_env(), cwd=REPO, log=self.workdir / f"onboard-{attempt}.log",
                stdout=result_file,
            )  # fmt: skip
            limit = 300 + 60 * len(self.hosts)
            run_started = time.monotonic()
            while proc.poll() is None:
                follow()
                if time.monotonic() - run_started > limit:
                    raise DemoError(f"worldland onboard did not finish within {limit} s")
                time.sleep(1)
            self.children.running.pop(proc.pid, None)
            try:
                result: dict[str, Any] = json.loads(result_file.read_text())
            except (OSError, ValueError):
                result = {}
            if proc.returncode == 0:
                break
            records = self.records()
            errors = {name: rec.last_error for name, rec in records.items() if rec.last_error}
            left = [name for name, rec in records.items() if rec.status.value == "approved"]
            if attempt == 2 or not left:
                raise DemoError(
                    f"worldland onboard failed (rc {proc.returncode}): {errors or result.get('status')}"
                )
            for name in left:
                error = errors.get(name) or "no error recorded (see the run's log)"
                r.step(f"{name}: failed, stays Approved: {plain(error)[:300]}")
            r.step("the next run retries what failed (worldland listen --onboard would, with backoff):")
        wait_until(follow, 120, "every provider to be Available")
        per_host = ", ".join(
            f"{name} ok={h.get('ok')} changed={h.get('changed')} failed={h.get('failed')}"
            for name, h in sorted((result.get("hosts") or {}).items())
        )
        r.step(f"onboard run {result.get('run_id', '')}: {result.get('status', '')}; {per_host}")
        with self.kube_api() as core:
            for host in self.hosts:
                node = core.read_node(self.record(host).node_name)
                ready = {c.type: c.status for c in node.status.conditions}.get("Ready")
                gpus = (node.status.allocatable or {}).get("nvidia.com/gpu", "0")
                info = node.status.node_info
                r.step(
                    f"node {node.metadata.name}: Ready={ready}, nvidia.com/gpu={gpus}, kubelet "
                    f"{info.kubelet_version}, {info.container_runtime_version}"
                )

    # -- 5. the ledger -------------------------------------------------------------------------------------

    def ledger(self) -> None:
        from worldland.domain.names import canonical_gpu_model

        r = self.report
        offers = [(h.name, canonical_gpu_model(m.name)) for h in self.hosts for m in h.gpus.models]
        # the provider with the most GPUs of one model
        name, model = sorted(set(offers), key=lambda offer: (-offers.count(offer), offer))[0]
        host, total = self.env.lab.host(name), offers.count((name, model))
        pid = self.provider_of(host)

        def cli(*args: str, refused: bool = False) -> None:
            proc = self.worldland(*args)
            if (proc.returncode != 0) != refused:
                raise DemoError(
                    f"worldland {args[0]}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
                )
            r.step(f"$ worldland {shlex.join(args)}")
            r.step(f"  {' '.join((proc.stdout or proc.stderr).split())}")

        def ledger() -> None:
            gpu = self.fleet.ledger.get(pid).gpu(model)
            r.step(
                f"  ledger of {host.name}, {model}: total {gpu.total} = available {gpu.available} + in use "
                f"{gpu.in_use} + mining {gpu.mining}"
            )

        r.step(f"{host.name} (provider {pid}) offers {total} x {model}; first its idle GPUs mine:")
        cli("mining", "--provider", pid, "--model", model, "--count", str(total))
        ledger()
        r.step("a rental of one GPU: mining yields it")
        cli(
            "allocate",
            "--job",
            "demo-rental-1",
            "--provider",
            pid,
            "--model",
            model,
            "--gpus",
            "1",
            "--cpu",
            "1",
            "--memory-mb",
            "2048",
        )
        ledger()
        r.step(f"a rental of {total + 1} GPUs: more than the provider has, refused as a whole")
        cli(
            "allocate",
            "--job",
            "demo-too-big",
            "--provider",
            pid,
            "--model",
            model,
            "--gpus",
            str(total + 1),
            refused=True,
        )
        ledger()
        r.step("the rental ends:")
        cli("release", "demo-rental-1")
        ledger()
        r.step("and mining takes the idle GPUs again:")
        cli("mining", "--provider", pid, "--model", model, "--count", str(total))
        ledger()

    # -- 6. the audit --------------------------------------------------------------------------------------

    def audit(self) -> None:
        r = self.report
        s = self.settings
        host = self.hosts[-1]
        before = self.record(host).status.value
        fraction = ["--max-offline-fraction", "1"] if len(self.hosts) == 1 else []  # 1 of 1 is all of them
        audit = AuditSchedule(
            self,
            [
                "audit",
                "--stale-after",
                f"{s.stale_after:g}",
                "--kubeconfig",
                str(self.env.kubeconfig),
                "--json",
                *fraction,
            ],
        )
        r.step(
            f"the audit: worldland audit --stale-after {s.stale_after:g} every {s.audit_every:g} s, as cron "
            f"runs it (production: every minute, --stale-after 120); the agents beat every "
            f"{s.heartbeat_interval:g} s (production: 30 s)"
        )
        with self.fleet_watch():
            r.step(f"$ systemctl stop {AGENT_UNIT}   (on {host.name}: its agent stops beating)")
            host.ssh(f"systemctl stop {AGENT_UNIT}")
            stopped = time.monotonic()
            node = self.audit_until(
                audit,
                host,
                "offline",
                s.stale_after + 4 * s.audit_every + 30,
                f"{host.name} silent for {{:.0f}} s",
            )
            silent = time.monotonic() - stopped
            r.step(f"{host.name}: {before} -> offline, {silent:.0f} s after its agent stopped")
            r.step(f"node {node.metadata.name}: {self.node_line(node)}  (read from the Kubernetes API)")
            if not r.interactive:  # on a terminal `worldland status --watch` shows it live
                r.step("$ worldland status")
                r.step(self.status_table())
            r.activity(f"waiting for Prometheus to fire {self.offline_alert}")
            alert = wait_until(self.firing_alert, 90, f"Prometheus to fire {self.offline_alert}", interval=1)
            summary = (alert.get("annotations") or {}).get("summary", "")
            r.step(
                f"Prometheus, {self.prometheus.url}/api/v1/alerts: {self.offline_alert} {alert.get('state')} "
                f"since {str(alert.get('activeAt', ''))[:19]}: {summary}"
            )
            r.step(f"$ systemctl start {AGENT_UNIT}   (on {host.name})")
            host.ssh(f"systemctl start {AGENT_UNIT}")
            started = time.monotonic()
            node = self.audit_until(audit, host, before, 60, f"{host.name}'s agent started {{:.0f}} s ago")
            r.step(
                f"{host.name}: offline -> {before}, {time.monotonic() - started:.0f} s after it started again"
            )
            r.step(f"node {node.metadata.name}: {self.node_line(node)}  (the offline taint removed)")
            r.activity(f"waiting for Prometheus to resolve {self.offline_alert}")
            wait_until(lambda: not self.firing_alert(), 30, f"{self.offline_alert} to resolve", interval=1)
            r.step(f"Prometheus: {self.offline_alert} no longer firing")

    @contextlib.contextmanager
    def fleet_watch(self) -> Iterator[None]:
        """On a terminal, ``worldland status --watch`` runs above while the audit phase waits."""
        if not self.report.interactive:
            yield
            return
        from demo.watch import FleetWatch

        argv = [str(BIN / "worldland"), "status", "--watch", "--interval", "1"]
        with self.report.aside():
            self.report.console.print(Text(f"{INDENT}$ worldland status --watch --interval 1", style="dim"))
            watch = FleetWatch(
                self.children,
                argv,
                env=self.command_env(),
                out=self.report.writer,
                columns=self.report.console.width,
            )
            with watch:
                yield

    def audit_until(self, audit: AuditSchedule, host: Any, status: str, timeout: float, activity: str) -> Any:
        """Run the audit on its schedule until the host's provider is ``status`` and its node marked as
        such (offline or not); the node. ``activity`` formats the seconds waited."""
        since = time.monotonic()

        def reached() -> Any:
            audit.tick()
            self.report.activity(activity.format(time.monotonic() - since))
            return self.record(host).status.value == status and self.node_if(
                host, offline=status == "offline"
            )

        return wait_until(reached, timeout, f"{host.name} to be {status}")

    def node_if(self, host: Any, *, offline: bool) -> Any:
        """The host's node when its label and taint say offline (or, ``offline=False``, that it is not)."""
        from worldland.domain.names import OFFLINE_TAINT_KEY

        node = self.node(host)
        tainted = any(t.key == OFFLINE_TAINT_KEY for t in node.spec.taints or [])
        marked = tainted and self.rental_status(node) == "offline"
        unmarked = not tainted and self.rental_status(node) != "offline"
        return node if (marked if offline else unmarked) else None

    @staticmethod
    def rental_status(node: Any) -> str:
        from worldland.domain.names import LABEL_RENTAL_STATUS

        return str((node.metadata.labels or {}).get(LABEL_RENTAL_STATUS, ""))

    @staticmethod
    def taints(node: Any) -> str:
        return ", ".join(f"{t.key}:{t.effect}" for t in node.spec.taints or []) or "none"

    def node_line(self, node: Any) -> str:
        from worldland.domain.names import LABEL_RENTAL_STATUS

        return f"{LABEL_RENTAL_STATUS}={self.rental_status(node)}, taints {self.taints(node)}"

    def firing_alert(self) -> dict[str, Any] | None:
        from testkit.prometheus import PrometheusError

        try:
            firing: list[dict[str, Any]] = self.prometheus.firing(self.offline_alert)
        except PrometheusError as exc:
            raise DemoError(f"Prometheus: {exc}") from None
        return firing[0] if firing else None

    # -- 7. summary ----------------------------------------------------------------------------------------

    def summary(self) -> None:
        r = self.report
        r.step("$ worldland status")
        r.step(self.status_table())
        table = Table(title="nodes, as the Kubernetes API has them", title_justify="left")
        for column in ("node", "labels", "taints"):
            table.add_column(column, overflow="fold")
        with self.kube_api() as core:
            nodes = sorted(core.list_node().items, key=lambda n: n.metadata.name)
        for node in nodes:
            labels = sorted((node.metadata.labels or {}).items())
            ours = "\n".join(f"{k}={v}" for k, v in labels if k.startswith("worldland.io/"))
            table.add_row(Text(plain(node.metadata.name)), Text(plain(ours)), Text(plain(self.taints(node))))
        r.show(table)

    def timing_table(self) -> Table:
        table = Table(title="time per phase", title_justify="left")
        table.add_column("phase")
        table.add_column("seconds", justify="right")
        for name, seconds in self.timings.items():
            table.add_row(name, f"{seconds:.1f}")
        table.add_row("total", f"{sum(self.timings.values()):.1f}")
        return table


class AuditSchedule:
    """``worldland audit`` every ``audit_every`` seconds, as cron runs it every minute; a pass that changed
    something says what (providers by host name)."""

    def __init__(self, demo: Demo, argv: list[str]) -> None:
        self.demo, self.argv = demo, argv
        self.last = 0.0

    def tick(self) -> None:
        if time.monotonic() - self.last < self.demo.settings.audit_every:
            return
        self.last = time.monotonic()
        proc = self.demo.worldland(*self.argv)
        if proc.returncode != 0:
            raise DemoError(f"worldland audit failed: {(proc.stderr or proc.stdout).strip()}")
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            return
        hosts = {pid: host for host, pid in self.demo.providers.items()}
        changes = [
            f"{AUDIT_REPORT_KEYS[key]}: {', '.join(hosts.get(str(p), str(p)) for p in report[key])}"
            for key in AUDIT_REPORT_KEYS
            if report.get(key)
        ]
        if changes:
            self.demo.report.step("audit pass: " + "; ".join(changes))


PHASES = (
    Phase(
        "lab",
        "Redis, the Kubernetes control plane, provider hosts, their package mirror, Prometheus",
        "the WorldLand Redis, your cluster's control plane, GPU owners' machines on the internet, the "
        "repositories they install from (NVIDIA's, Debian's, pkgs.k8s.io) and your monitoring",
        Demo.lab,
    ),
    Phase(
        "agents",
        "Ansible installs the provider agent on every host; each agent finds its GPUs and registers",
        "GPU owners installing worldland-provider on machines that run the NVIDIA driver (pip install "
        "worldland, or this role run by whoever manages the machines)",
        Demo.agents,
    ),
    Phase(
        "approval",
        "the listener validates each registration, approves it by policy, issues a short-lived join token",
        "`worldland listen` as a systemd unit or a Kubernetes Deployment, with your policy.yml and a "
        "kubeconfig for the cluster",
        Demo.approval,
    ),
    Phase(
        "onboarding",
        "worldland onboard: driver, container runtime, kubelet, kubeadm join, labels",
        "onboarding real GPU servers over SSH, from your control host (there the driver step reboots them)",
        Demo.onboarding,
    ),
    Phase(
        "ledger",
        "a rental allocated and released through the capacity ledger; mining yields to it",
        "the rental marketplace placing jobs, and the miners that use idle GPUs",
        Demo.ledger,
    ),
    Phase(
        "audit",
        "an agent stops; the audit marks it Offline and taints its node; the alert fires; it recovers",
        "a provider's machine losing power or network, the audit run by cron every minute, your Prometheus "
        "and Alertmanager",
        Demo.audit,
    ),
    Phase(
        "summary",
        "the provider table and each node's labels and taints",
        "what an operator checks with `worldland status` and `kubectl get nodes --show-labels`",
        Demo.summary,
    ),
)

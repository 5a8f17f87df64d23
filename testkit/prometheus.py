"""promtool and a real Prometheus server for tests and the demo: Debian's ``prometheus`` package.

The package (bookworm: 2.42.0) is fetched once with ``apt-get download`` into
``~/.cache/worldland/prometheus/`` and unpacked there with ``dpkg -x`` (never installed: no service, no
``prometheus`` user); ``scripts/install-system-deps.sh`` fetches it the same way, and
``$WORLDLAND_CACHE`` moves the cache (as for etcd, ``testkit/realkube.py``).

    with PrometheusServer(["127.0.0.1:9464"], rule_files=[RULES]) as prom:   # job worldland-listener
        prom.wait_for_targets_up()
        prom.query('job:worldland_providers:max{status="offline"}')
        prom.wait_for_alert("WorldlandProvidersOffline", timeout=20)

The server listens on 127.0.0.1 at a free port with its own scratch directory (config, TSDB, log),
scrapes and evaluates every ``interval`` seconds (1 s by default), and is stopped by its PID (SIGTERM,
then SIGKILL) by ``stop()``, ``__exit__``, a failed start, or the death of the process that started it.
The unpacked binary runs from the cache: its web assets and console templates are given as flags,
since its defaults point at ``/usr/share/prometheus`` and ``/etc/prometheus``.

``python -m testkit.prometheus --check`` says whether the binaries can be had; with ``--target
HOST:PORT`` it runs a server on the repository's rules until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Self

import yaml

from testkit.debian import run_tool, unpack_package
from testkit.realkube import Availability, cache_dir, directory_lock, terminate
from testkit.redis_server import free_port

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "worldland-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "worldland-rules.test.yml"
LISTENER_JOB = "worldland-listener"  # the scrape job the rules expect (see the rules file's header)
PACKAGE = "prometheus"
SCRATCH_PREFIX = "worldland-prometheus-"
STOP_GRACE_S = 10.0


class PrometheusError(RuntimeError):
    """promtool or prometheus cannot be had, or the server did not come up (the message says why)."""


# -- the binaries ------------------------------------------------------------------------------------------


def package_dir() -> Path:
    return cache_dir() / PACKAGE


def unpacked_root() -> Path:
    """Where ``dpkg -x`` put the package: ``<cache>/prometheus/root``."""
    return package_dir() / "root"


def can_fetch() -> bool:
    """Whether this machine has the tools to fetch the package (apt-get and dpkg)."""
    return all(shutil.which(tool) for tool in ("apt-get", "dpkg"))


def binary(name: str, fetch: bool = True) -> Path:
    """``usr/bin/<name>`` (``prometheus`` or ``promtool``) of the unpacked package, fetched when missing."""
    if name not in ("prometheus", "promtool"):
        raise ValueError(f"the prometheus package has no {name!r} binary here")
    path = unpacked_root() / "usr" / "bin" / name
    if os.access(path, os.X_OK):
        return path
    if not fetch:
        raise PrometheusError(f"{name} is not unpacked at {path} (make install fetches it)")
    directory = package_dir()
    with directory_lock(directory):
        if os.access(path, os.X_OK):
            return path
        unpack_package(PACKAGE, directory, error=PrometheusError)
    if not os.access(path, os.X_OK):
        raise PrometheusError(f"Debian's {PACKAGE} package has no usr/bin/{name}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` (fetched when missing); the caller judges the exit status."""
    return subprocess.run(
        [str(binary("promtool")), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def version() -> str:
    """``2.42.0+ds`` (the first line of ``prometheus --version``)."""
    command = [str(binary("prometheus")), "--version"]
    first = run_tool(command, "prometheus --version", error=PrometheusError).splitlines()[0]
    return first.split("version", 1)[-1].strip().split(" ")[0]


def available(fetch: bool = True) -> Availability:
    """Whether promtool and prometheus can be had (fetched now with ``fetch``); ``reason`` says why not."""
    try:
        found = [binary(name, fetch=fetch) for name in ("promtool", "prometheus")]
    except PrometheusError as exc:
        return Availability(False, str(exc))
    return Availability(True, " and ".join(str(p) for p in found))


# -- the server --------------------------------------------------------------------------------------------


def _cleanup(process: list[subprocess.Popen[bytes]], logs: list[IO[bytes]], workdir: list[Path]) -> None:
    """What ``stop()`` does; also registered with ``weakref.finalize`` for an interpreter that exits first."""
    terminate({f"prometheus {proc.pid}": proc for proc in process}, grace=STOP_GRACE_S)
    process.clear()
    for log in logs:
        log.close()
    logs.clear()
    for path in workdir:
        shutil.rmtree(path, ignore_errors=True)
    workdir.clear()


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class PrometheusServer:
    """A real ``prometheus`` on 127.0.0.1 (see the module docstring).

    ``targets``: ``{job: ["host:port", ...]}``, or a list of ``host:port`` for the job the rules expect
    (``worldland-listener``). ``rule_files`` are loaded as they are (the repository's rules by default).
    ``interval``: the scrape and evaluation interval, seconds."""

    def __init__(
        self,
        targets: Mapping[str, Iterable[str]] | Iterable[str],
        rule_files: Iterable[str | os.PathLike[str]] = (RULES,),
        *,
        interval: float = 1.0,
        start_timeout: float = 60.0,
    ) -> None:
        if isinstance(targets, Mapping):
            self.targets = {job: list(addresses) for job, addresses in targets.items()}
        else:
            self.targets = {LISTENER_JOB: list(targets)}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        for path in self.rule_files:
            if not path.is_file():
                raise PrometheusError(f"rule file {path} does not exist")
        self.interval = interval
        self.start_timeout = start_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._process: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._workdirs: list[Path] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._process, self._logs, self._workdirs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if not self._process:
            raise PrometheusError("prometheus is not started")
        return self._process[0].pid

    def config(self) -> dict[str, Any]:
        """The configuration the server runs with (written to ``prometheus.yml`` in its directory)."""
        every = _duration(self.interval)
        return {
            "global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets.items()
            ],
        }

    # -- life cycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self._process:
            raise PrometheusError("already started")
        deadline = time.monotonic() + self.start_timeout
        try:
            prometheus = binary("prometheus")
            self.workdir = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            self._workdirs.append(self.workdir)
            (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.config(), sort_keys=False))
            for attempt in range(3):  # the free port may be taken before prometheus binds it
                self.port = free_port()
                self._spawn(prometheus)
                try:
                    self._wait_ready(deadline)
                    break
                except PrometheusError as exc:
                    if "address already in use" not in str(exc) or attempt == 2:
                        raise
                    _cleanup(self._process, self._logs, [])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ends the server by its PID (SIGTERM, then SIGKILL after 10 s) and removes its directory."""
        _cleanup(self._process, self._logs, self._workdirs)

    def _spawn(self, prometheus: Path) -> None:
        root, work = unpacked_root(), self._dir
        command = [
            str(prometheus),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.local-assets={root / 'usr' / 'share' / 'prometheus' / 'web'}",
            f"--web.console.templates={root / 'etc' / 'prometheus' / 'consoles'}",
            f"--web.console.libraries={root / 'etc' / 'prometheus' / 'console_libraries'}",
        ]
        if shutil.which("setpriv"):  # SIGKILL when this process dies without stop(): no orphan
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        log = open(work / "prometheus.log", "wb")  # noqa: SIM115 (closed by stop())
        self._logs.append(log)
        self._process.append(
            subprocess.Popen(
                command,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the caller, which stops it
            )
        )

    def _wait_ready(self, deadline: float) -> None:
        last = "not yet"
        while True:
            process = self._process[0]
            if process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited ({process.returncode}) before ready:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:  # noqa: S310 (http://127.0.0.1)
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"prometheus not ready after {self.start_timeout:.0f}s ({last}):\n{self.log_tail()}"
                )
            time.sleep(0.1)

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise PrometheusError("prometheus is not started")
        return self.workdir

    def log_tail(self, size: int = 2000) -> str:
        try:
            data = (self._dir / "prometheus.log").read_bytes()[-size:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()

    # -- the HTTP API ---------------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>?params``: the answer's ``data`` (``PrometheusError`` unless it succeeded)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (http://127.0.0.1)
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"GET {url}: {exc}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {...}, "value": [time, "text"]}, ...]`` (a vector's samples)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending, firing), each with ``labels``, ``annotations``, ``state``, ``value``."""
        return self.api("alerts")["alerts"]

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"]

    def targets_health(self) -> dict[str, str]:
        """``{scrape URL: "up"|"down"|"unknown"}`` of the active targets."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets", state="active")["activeTargets"]}

    def wait_for_targets_up(self, timeout: float = 30.0) -> None:
        self._wait_for(
            lambda: (health := self.targets_health()) and all(h == "up" for h in health.values()),
            timeout,
            "every target up",
            lambda: str(self.targets_health()),
        )

    def wait_for_alert(self, name: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The firing alerts named ``name``, once there is one (``PrometheusError`` after ``timeout``)."""
        found: list[dict[str, Any]] = []

        def fired() -> bool:
            found[:] = self.firing(name)
            return bool(found)

        self._wait_for(fired, timeout, f"alert {name} firing", lambda: json.dumps(self.alerts()))
        return found

    def _wait_for(
        self, check: Callable[[], object], timeout: float, what: str, state: Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self._process and self._process[0].poll() is not None:
                raise PrometheusError(
                    f"prometheus exited ({self._process[0].returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise PrometheusError(f"no {what} after {timeout:.0f}s: {state()[-1500:]}")
            time.sleep(min(0.2, self.interval / 2))


# -- python -m testkit.prometheus --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.prometheus",
        description=f"Run a real Prometheus on {RULES.relative_to(REPO)} until ^C.",
    )
    parser.add_argument("--check", action="store_true", help="only say whether it is available")
    parser.add_argument(
        "--target", action="append", default=[], help=f"HOST:PORT to scrape as job {LISTENER_JOB}"
    )
    args = parser.parse_args(argv)
    status = available()
    if args.check or not status:
        print(("available: " if status else "not available: ") + status.reason)
        return 0 if status else 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with PrometheusServer(args.target) as prom:
        print(f"prometheus {version()} at {prom.url} (pid {prom.pid}), scraping {prom.targets}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())

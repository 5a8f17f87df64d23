"""``python -m demo --hosts N``: run the phases, then tear everything down, whatever happened.

Exit status: 0 when every phase passed and nothing was left behind; 1 when a phase failed (named, with why)
or teardown left something; 130 on SIGINT or SIGTERM (Ctrl-C). A second signal during teardown is ignored,
so that teardown always finishes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import tempfile
import traceback
from pathlib import Path
from types import FrameType

from demo.children import DemoError
from demo.flow import PHASES, Demo, Settings
from demo.report import Reporter, Stopwatch

MAX_HOSTS = 20
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop the phase in hand (BaseException: no ``except Exception`` swallows it)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="WorldLand end to end on lab hosts on this machine (root), then everything torn down.",
    )
    parser.add_argument("--hosts", type=int, default=3, help=f"provider hosts, 1 to {MAX_HOSTS} (default 3)")
    parser.add_argument(
        "--wheelhouse", type=Path, default=None, metavar="DIR",
        help="the agent's wheels for the hosts' Python (default: built from this checkout with pip wheel)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-logs", type=Path, default=None, metavar="DIR",
        help="copy the logs (listener, onboarding runs, agents, Prometheus) to DIR before teardown",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts must be between 1 and {MAX_HOSTS}")
    for name in ("wheelhouse", "keep_logs"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Reporter(total=len(PHASES))
    if os.geteuid() != 0:
        report.error("demo: needs root (the lab hosts are network and mount namespaces): sudo make demo")
        return EXIT_FAILED
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="wldemo-", dir="/tmp"))
    # the Redis's and the control plane's scratch directories go in here too: one directory to remove
    (workdir / "tmp").mkdir()
    os.environ["TMPDIR"] = str(workdir / "tmp")
    tempfile.tempdir = None
    demo = Demo(
        Settings(hosts=args.hosts, wheelhouse=args.wheelhouse, keep_logs=args.keep_logs), report, workdir
    )
    report.line(
        f"WorldLand demo: {args.hosts} provider host(s) on this machine, each phase timed; everything it "
        f"starts lives in {workdir} and goes at the end"
    )
    code = 0
    try:
        code = run_phases(demo)
    except Interrupted as why:  # between phases
        report.line(f"interrupted ({why})")
        code = EXIT_INTERRUPTED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        left = teardown(demo)
        if left:
            report.error(f"demo: teardown left {', '.join(left)}")
            code = code or EXIT_FAILED
    report.show(demo.timing_table())
    if code == 0:
        report.line("demo finished: every phase passed, nothing left running", style="bold green")
    return code


def run_phases(demo: Demo) -> int:
    report = demo.report
    for index, phase in enumerate(PHASES, 1):
        report.phase_started(index, phase.name, phase.title, phase.stands_in_for)
        clock = Stopwatch()
        try:
            phase.run(demo)
        except Interrupted as why:
            demo.timings[phase.name] = clock.seconds
            report.phase_interrupted(index, phase.name, clock.seconds, str(why))
            return EXIT_INTERRUPTED
        except Exception as exc:  # any failure names its phase; unexpected ones show where
            demo.timings[phase.name] = clock.seconds
            message = str(exc) if isinstance(exc, DemoError) else f"{type(exc).__name__}: {exc}"
            report.phase_failed(index, phase.name, clock.seconds, message)
            if not isinstance(exc, DemoError):
                report.error("".join(traceback.format_exception(exc)[-6:]))
            report.error(f"demo: failed in phase {index}/{len(PHASES)} '{phase.name}': {message}")
            return EXIT_FAILED
        demo.timings[phase.name] = clock.seconds
        report.phase_finished(index, phase.name, clock.seconds)
    return 0


def teardown(demo: Demo) -> list[str]:
    """Stop what the demo started - its programs by process group, the lab by PID and name - and remove its
    directory. Returns what is still there (nothing, unless something refused to go)."""
    report = demo.report
    clock = Stopwatch()
    report.line("teardown: stopping the listener, Prometheus, the lab hosts, the control plane and Redis")
    slot = demo.env.lab.slot if demo.env is not None else None
    lab_dir = demo.env.lab.dir if demo.env is not None else None
    problems = []
    for step in (demo.children.stop_all, demo.save_logs, demo.stack.close):
        try:
            step()
        except Exception as exc:  # keep going: the rest must still go
            problems.append(f"{type(exc).__name__}: {exc}")
    kill_processes_in(demo.workdir)
    if slot is not None and lab_dir is not None:
        with contextlib.suppress(Exception):
            from tests.lab.lab import teardown_dir

            teardown_dir(lab_dir)  # what a lab whose teardown was cut short left
    shutil.rmtree(demo.workdir, ignore_errors=True)
    left = leftovers(demo.workdir, slot)
    demo.timings["teardown"] = clock.seconds
    if problems:
        report.error("teardown: " + "; ".join(problems))
    if not left:
        report.line(
            f"teardown: done in {clock.seconds:.1f} s; no namespace, process, link, route, cgroup or "
            f"directory of the demo is left"
        )
    return left


def processes_in(directory: Path) -> set[int]:
    """Processes working in ``directory`` or naming it on their command line."""
    found = set()
    prefix = f"{directory}/".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(proc.name)
            if pid == os.getpid():
                continue
            cwd = os.readlink(proc / "cwd")
            inside = (cwd + "/").encode().startswith(prefix) or prefix in (proc / "cmdline").read_bytes()
            if inside and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.add(pid)
    return found


def kill_processes_in(directory: Path) -> None:
    from tests.lab.lab import kill_pids

    pids = processes_in(directory)
    if pids:
        kill_pids(pids)


def leftovers(directory: Path, slot: int | None) -> list[str]:
    left = [f"process {pid}" for pid in sorted(processes_in(directory))]
    if directory.exists():
        left.append(f"directory {directory}")
    if slot is not None:
        from tests.lab.lab import NET_BASE, lab_resources

        pattern = re.compile(rf"^wlab{slot}(?:-h\d+|h\d+)?$")
        resources = lab_resources()
        left += [f"namespace {n}" for n in resources["namespaces"] if pattern.match(n)]
        left += [f"link {n}" for n in resources["links"] if pattern.match(n)]
        left += [f"route {r}" for r in resources["routes"] if r.startswith(f"{NET_BASE}.{slot}.")]
        left += [f"cgroup {c}" for c in resources["cgroups"] if pattern.match(Path(c).name)]
    return left

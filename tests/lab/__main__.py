"""python -m tests.lab up|down|status|sweep|bench - the SSH lab by hand (and for ``make demo``).

  up     [--hosts N] [--gpus SPEC] [--dir D] [--kubeconfig K] [--redis-url U] [--json]
  status [--dir D] [--json]
  down   [--dir D]
  sweep  [--all]          remove leftovers of labs whose owner died (--all: every lab on this machine)
  bench  [--sizes 1,5,25] figures: lab start/teardown and `ansible -m ping` times

``up`` leaves the hosts running after it exits (state in D, default /tmp/worldland-lab) until ``down``.
Needs root. GPU SPEC: see tests/lab/gpus.py (e.g. "RTX-4090:2,A100-SXM4-80GB:8/nodriver,none").
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from tests.lab.lab import Lab, LabError, sweep

DEFAULT_DIR = "/tmp/worldland-lab"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab and leave it running")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--gpus", default=None, help='per-host GPU spec, e.g. "RTX-4090:2,none"')
    up.add_argument("--dir", default=DEFAULT_DIR)
    up.add_argument(
        "--kubeconfig", default=None, help="admin kubeconfig the kubeadm stand-in uses (lab shortcut)"
    )
    up.add_argument("--redis-url", default=None)
    up.add_argument("--json", action="store_true")
    for name in ("status", "down"):
        p = sub.add_parser(name)
        p.add_argument("--dir", default=DEFAULT_DIR)
        if name == "status":
            p.add_argument("--json", action="store_true")
    sw = sub.add_parser("sweep", help="remove leftovers of dead labs")
    sw.add_argument("--all", action="store_true", help="also labs that are still running")
    bench = sub.add_parser("bench", help="measure lab start/teardown and ansible ping")
    bench.add_argument("--sizes", default="1,5,25")
    bench.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _interrupt)
            lab = Lab(hosts=args.hosts, gpus=args.gpus, dir=args.dir)
            try:
                lab.start(detach=True)  # on failure or interrupt, start() tears down what it made
                if args.kubeconfig or args.redis_url:
                    lab.attach(kubeconfig=args.kubeconfig, redis_url=args.redis_url)
            except KeyboardInterrupt:
                lab.stop()
                print("interrupted: lab torn down", file=sys.stderr)
                return 130
            except BaseException:
                lab.stop()
                raise
            print(json.dumps(_state(lab), indent=2) if args.json else lab.summary())
            took = lab.timings["start_s"]
            print(f"started in {took:.2f} s; stop: python -m tests.lab down --dir {lab.dir}", file=sys.stderr)
        elif args.command == "status":
            lab = Lab.load(args.dir)
            print(json.dumps(_state(lab), indent=2) if args.json else lab.summary())
            return 0 if all(lab.is_up().values()) else 3
        elif args.command == "down":
            lab = Lab.load(args.dir)
            lab.stop()
            print(f"lab {lab.slot} down ({len(lab.hosts)} hosts) in {lab.timings['stop_s']:.2f} s")
        elif args.command == "sweep":
            removed = sweep(include_live=args.all)
            print(f"removed labs in slots: {removed}" if removed else "nothing to remove")
        elif args.command == "bench":
            from tests.lab.bench import run

            run([int(s) for s in args.sizes.split(",")], args.json)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _state(lab: Lab) -> dict:
    up = lab.is_up()
    return {
        "slot": lab.slot,
        "dir": str(lab.dir),
        "bridge": lab.bridge,
        "gateway": lab.gateway,
        "subnet": lab.subnet,
        "inventory": str(lab.inventory),
        "key": str(lab.key),
        "known_hosts": str(lab.known_hosts),
        "attached": lab.attached,
        "hosts": [h.to_json() | {"up": up[h.name], "inventory_vars": h.inventory_vars} for h in lab.hosts],
    }


if __name__ == "__main__":
    sys.exit(main())

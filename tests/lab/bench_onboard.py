"""Fan-out of ``playbooks/onboard.yml``: 1 lab host against N (default 20), measured in one run.

    python -m tests.lab.bench_onboard [--hosts 1,20] [--forks 20] [--gpus RTX-4090:2] [--stand-in-join]

Every size gets a fresh ``tests.lab.onboarding.OnboardingLab`` (kube-mode lab hosts, the lab's signed apt
repository on the gateway, a Redis, the real control plane of ``../shared/kube``), its providers registered
and approved, then one timed ``ansible-playbook playbooks/onboard.yml`` - real package installs and real
``kubeadm join`` on every host, until each provider is Available. What is timed is the playbook alone
(lab start, repository build and registration are not). Settings, the same for every size: ``--forks``
(default: the largest size, so no host waits for a fork), SSH with ControlMaster/ControlPersist 60 s (the
lab's options), pipelining on (``ANSIBLE_PIPELINING=1``), the ``linear`` strategy. Needs root and
``../shared/kube``; ``--stand-in-join`` acts as if it were absent: the Kubernetes API test server and the
lab's kubeadm/kubelet stand-in packages, whose join checks the token and the pinned CA and registers the
Node (no kubelet runs), which separates Ansible's fan-out from 20 real kubelets' CPU. Prints one JSON line
per size (with each host that did not become Available and the error it recorded), then the ratio of the
largest to the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from typing import Any

from testkit.realkube import DISABLE_ENV
from tests.lab.onboarding import OnboardingLab
from worldland.protocol.status import Status


def measure(hosts: int, forks: int, gpus: str) -> dict[str, Any]:
    with OnboardingLab(hosts=hosts, gpus=[gpus]) as env:
        env.register_all()
        env.approve_all()
        started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = env.playbook(
            "onboard.yml", "--forks", str(forks), timeout=3600, extra_env={"ANSIBLE_PIPELINING": "1"}
        )
        took = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the controller's share: ansible-playbook, its forks and ssh clients (the hosts' side, which on a
        # real fleet runs on each host's own CPUs, is not in it)
        controller_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cluster = env.kube_description
        fleet = env.fleet()
        records = [fleet.store.require(env.provider_id(h)) for h in env.lab.hosts]
        available = sum(r.status is Status.AVAILABLE for r in records)
        # what each host that did not make it has recorded (the error onboard.yml's rescue stored)
        errors = {r.node_name: r.last_error for r in records if r.status is not Status.AVAILABLE}
    recap = re.findall(r"^\S+\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", proc.stdout, re.M)
    return {
        "hosts": hosts,
        "forks": forks,
        "seconds": round(took, 1),
        "controller_cpu_s": round(controller_cpu, 1),
        "rc": proc.returncode,
        "available": available,
        "failed_or_unreachable": sum(int(u) + int(f) for u, f in recap),
        "errors": errors,
        "cluster": cluster,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lab.bench_onboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--hosts", default="1,20", help="sizes, comma-separated (default 1,20)")
    parser.add_argument("--forks", type=int, default=0, help="Ansible forks (default: the largest size)")
    parser.add_argument("--gpus", default="RTX-4090:2", help="each host's GPUs (the lab's spec)")
    parser.add_argument(
        "--stand-in-join",
        action="store_true",
        help="the API test server and the lab's kubeadm/kubelet stand-ins instead of ../shared/kube",
    )
    args = parser.parse_args(argv)
    if args.stand_in_join:
        os.environ[DISABLE_ENV] = "0"
    sizes = [int(n) for n in args.hosts.split(",")]
    forks = args.forks or max(sizes)
    results = []
    for hosts in sizes:
        result = measure(hosts, forks, args.gpus)
        print(json.dumps({"bench": "onboard", **result}), flush=True)
        if result["rc"] != 0 or result["available"] != hosts:
            sys.exit(f"onboard.yml on {hosts} hosts did not make them all Available: {result}")
        results.append(result)
    small, large = results[0], results[-1]
    ratio = large["seconds"] / small["seconds"]
    print(
        json.dumps(
            {
                "bench": "onboard",
                "ratio": round(ratio, 2),
                "of": f"{large['hosts']} hosts / {small['hosts']} host(s)",
                "goal": "<= 3",
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run the Kubernetes API test server in the foreground (for ``make demo`` and manual use).

    python -m testkit.kube_server --kubeconfig PATH [--bind 127.0.0.1] [--port N] [--extra-ip IP ...]

It writes the kubeconfig once it listens, prints one JSON line (url, kubeconfig, ca_cert_hash,
advertised endpoint, pid) and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from testkit.kube_server.server import KubeApiServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.kube_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kubeconfig", required=True, help="where to write the admin kubeconfig")
    parser.add_argument("--bind", default="127.0.0.1", help="address for the kubeconfig (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--extra-ip",
        action="append",
        default=[],
        help="also listen on this address (repeatable), e.g. a lab bridge",
    )
    parser.add_argument(
        "--advertise-address", help="endpoint in cluster-info (default: first extra IP, else bind)"
    )
    parser.add_argument(
        "--workdir", help="directory for the CA and serving certificate (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    server = KubeApiServer(
        bind=args.bind,
        port=args.port,
        extra_ips=args.extra_ip,
        advertise_address=args.advertise_address,
        workdir=args.workdir,
        kubeconfig_path=args.kubeconfig,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    try:
        print(
            json.dumps(
                {
                    "url": server.url,
                    "kubeconfig": str(server.kubeconfig_path),
                    "ca_cert_hash": server.ca_cert_hash,
                    "advertise": server.url_for(server.advertise_address),
                    "listen": [server.url_for(a) for a in [args.bind, *args.extra_ip]],
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

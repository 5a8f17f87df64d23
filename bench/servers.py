"""The private servers a benchmark runs against: a redis-server and the Kubernetes API test server."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from testkit.kube_server.server import KubeApiServer
from testkit.redis_server import RedisServer
from worldland.kube import KubeClient
from worldland.state.connection import connect


@dataclass
class Servers:
    redis_server: RedisServer
    kube_server: KubeApiServer
    client: redis.Redis
    cluster: KubeClient


@contextmanager
def private_servers(suite: str) -> Iterator[Servers]:
    """Start both, print where they listen, stop both (also on failure)."""
    with (
        RedisServer() as redis_server,
        tempfile.TemporaryDirectory() as tmp,
        KubeApiServer(workdir=Path(tmp)) as kube_server,
    ):
        print(
            f"# {suite} benchmark: redis-server on 127.0.0.1:{redis_server.port}, "
            f"Kubernetes API test server at {kube_server.url}"
        )
        yield Servers(
            redis_server,
            kube_server,
            connect(redis_server.url),
            KubeClient.from_kubeconfig(kube_server.kubeconfig_path),
        )

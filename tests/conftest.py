from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from testkit.kube_server.fixtures import kube_api, kube_server  # noqa: F401 (fixtures)
from testkit.redis_server import RedisServer
from worldland.protocol.streams import StreamNames
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

# The SSH lab's fixtures (lab, lab_pool, lab_gateway): tests/lab/fixtures.py; the real control plane
# from ../shared/kube (real_kube; the summary line of which Kubernetes API ran): testkit/realkube_fixtures.py
pytest_plugins = ["tests.lab.fixtures", "testkit.realkube_fixtures"]

REPO = Path(__file__).resolve().parent.parent
# Copies of ../shared/protocol/; a test checks they still match when shared/ is beside the repo.
PROTOCOL = REPO / "tests" / "data" / "protocol"
SHARED_PROTOCOL = REPO.parent / "shared" / "protocol"
# Shapes the deployed Go agent and SDK really send, beyond the shared examples (README there).
GO_AGENT = REPO / "tests" / "data" / "go-agent"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def keys() -> Keys:
    """A fresh key prefix per test: tests share one server but never each other's data."""
    return Keys(prefix=f"test-{uuid.uuid4().hex[:8]}:")


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def load_protocol(name: str) -> dict:
    return json.loads((PROTOCOL / name).read_text())


def load_go_agent(name: str) -> dict:
    return json.loads((GO_AGENT / name).read_text())


# Per test: its own stream namespace, a decoding client and the fleet over it (test files may override).
@pytest.fixture
def names() -> StreamNames:
    return StreamNames(namespace=f"t{uuid.uuid4().hex[:6]}:")


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


@pytest.fixture
def fleet(client: redis.Redis, keys: Keys) -> Fleet:
    return Fleet.open(client, keys)

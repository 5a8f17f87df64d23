"""The ``worldland.provider.join_params`` lookup, through Ansible's loader, against real Redis and the
Kubernetes API test server (community.general's plugin-test style: the plugin object, real backends)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import init_plugin_loader, lookup_loader

from testkit.factories import registration
from worldland.domain.lifecycle import Status
from worldland.kube import KubeClient
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lookup():
    init_plugin_loader([str(REPO / ".collections")])
    plugin = lookup_loader.get("worldland.provider.join_params")
    assert plugin is not None
    return plugin


@pytest.fixture
def fleet(redis_url: str, keys: Keys) -> Fleet:
    return Fleet.open(connect(redis_url), keys)


def options(redis_url: str, keys: Keys, kube_api) -> dict[str, object]:
    return {"redis_url": redis_url, "key_prefix": keys.prefix, "kubeconfig": str(kube_api.kubeconfig)}


def approved(fleet: Fleet, pid: str) -> None:
    fleet.register(registration(pid))
    fleet.store.transition(pid, Status.APPROVED)


def test_the_join_of_an_approved_provider_is_issued_then_reused(lookup, fleet, redis_url, keys, kube_api):
    approved(fleet, "p-join")
    [first] = lookup.run(["p-join"], variables={}, **options(redis_url, keys, kube_api))
    cluster = KubeClient.from_kubeconfig(kube_api.kubeconfig)
    token_id, secret = first["token"].split(".")
    assert cluster.bootstrap_token_secret(token_id) == secret  # a real Secret behind it
    assert first["ca_hash"] == cluster.ca_cert_hash()
    assert (first["host"], first["port"]) == cluster.join_endpoint()
    assert first["node_name"] == fleet.store.require("p-join").node_name
    [second] = lookup.run(["p-join"], variables={}, **options(redis_url, keys, kube_api))
    assert second["token"] == first["token"]  # still valid for long: the same one


def test_a_token_close_to_expiry_is_replaced_before_use(lookup, fleet, redis_url, keys, kube_api):
    approved(fleet, "p-expiring")
    [first] = lookup.run(["p-expiring"], variables={}, **options(redis_url, keys, kube_api))
    token_id = first["token"].split(".")[0]
    fleet.store.record_token("p-expiring", token_id, fleet.store.clock() + 120)  # 2 minutes left
    [fresh] = lookup.run(["p-expiring"], variables={}, **options(redis_url, keys, kube_api))
    assert fresh["token"] != first["token"]


def test_a_provider_that_is_not_approved_is_an_error(lookup, fleet, redis_url, keys, kube_api):
    fleet.register(registration("p-pending"))
    with pytest.raises(AnsibleLookupError, match=r"p-pending.*pending, not approved"):
        lookup.run(["p-pending"], variables={}, **options(redis_url, keys, kube_api))


def test_kubernetes_down_is_an_error_and_the_provider_keeps_it(lookup, fleet, redis_url, keys, kube_api):
    approved(fleet, "p-down")
    with kube_api.server.outage("refuse"), pytest.raises(AnsibleLookupError, match="p-down: token"):
        lookup.run(["p-down"], variables={}, **options(redis_url, keys, kube_api))
    assert fleet.store.require("p-down").last_error.startswith("token: ")


def test_ansible_doc_shows_the_lookup():
    doc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "lookup", "worldland.provider.join_params"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert doc.returncode == 0, doc.stderr
    assert "never from inventory variables" in " ".join(doc.stdout.split()).lower()

"""The listener's reconcile pass and the other writers of a provider's state (the handler that approved
it, onboard.yml's provider_node) never trip over each other."""

from __future__ import annotations

import time

import pytest

from testkit.agent import Agent
from testkit.clock import FakeClock
from testkit.factories import registration
from testkit.nodes import create_node
from worldland.control.onboarding import TOKEN_RETRY_AFTER_S, Onboarding
from worldland.domain.lifecycle import Status
from worldland.domain.policy import ApprovalPolicy
from worldland.kube import KubeClient
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet


@pytest.fixture
def onboarding(client, keys, names, kube_api):
    from worldland.kube import KubeClient

    clock = FakeClock(time.time())  # the token Secrets expire by the real clock
    fleet = Fleet.open(client, keys, clock)
    cluster = KubeClient.from_kubeconfig(kube_api.kubeconfig)
    yield Onboarding(fleet=fleet, streams=names, policy=ApprovalPolicy(), cluster=cluster, clock=clock)
    cluster.close()


def test_a_token_still_being_issued_elsewhere_is_left_to_its_handler(onboarding, client, names):
    """Approved a moment ago with no token yet: the listener that approved it is issuing one (two
    listeners share a group). The reconcile waits; once TOKEN_RETRY_AFTER_S have passed without a token
    (that listener died), it issues one: the provider is answered exactly once either way."""
    fleet, clock = onboarding.fleet, onboarding.clock
    fleet.register(registration("rig-1"))
    fleet.store.transition("rig-1", Status.APPROVED)
    agent = Agent(client, names)
    report = onboarding.reconcile()
    assert report.tokens_issued == 0 and agent.await_answer("rig-1", block_ms=200) is None
    clock.now += TOKEN_RETRY_AFTER_S - 1
    assert onboarding.reconcile().tokens_issued == 0
    clock.now += 1
    assert onboarding.reconcile().tokens_issued == 1
    answer = agent.await_answer("rig-1")
    assert answer["status"] == "approved" and answer["join_token"]
    assert fleet.store.require("rig-1").token_id
    # issued: later passes send nothing more
    clock.now += 3 * TOKEN_RETRY_AFTER_S
    assert onboarding.reconcile().tokens_issued == 0
    assert len(client.xrange(names.response("rig-1"))) == 1


def test_the_playbooks_advance_tolerates_the_listener_getting_there_first(fleet, kube_api) -> None:
    """Found by the demo: ``onboard.yml``'s ``provider_node`` (``Onboarding.advance_provider``) reads the
    provider, then the node; meanwhile the running listener's reconcile pass may move the provider to Joined
    and Available itself. The playbook's step then goes on from there instead of failing the host."""
    pid = "p-demo-race"
    fleet.register(registration(pid, gpus=1))
    fleet.store.transition(pid, Status.APPROVED)
    node = fleet.store.require(pid).node_name
    create_node(kube_api, node, ready=True, gpus=1)
    cluster = KubeClient.from_kubeconfig(kube_api.kubeconfig)
    listener_side = Onboarding(fleet=fleet, streams=StreamNames(), policy=ApprovalPolicy(), cluster=cluster)
    playbook_side = Onboarding(fleet=fleet, streams=StreamNames(), policy=ApprovalPolicy(), cluster=cluster)
    read_node = cluster.node_state

    def node_state_after_the_listener(name: str):  # the reconcile pass runs between the two reads
        listener_side.advance_nodes()
        return read_node(name)

    cluster.node_state = node_state_after_the_listener  # type: ignore[method-assign]
    assert fleet.store.require(pid).status is Status.APPROVED
    result = playbook_side.advance_provider(pid)
    assert result.after is Status.AVAILABLE and fleet.store.require(pid).status is Status.AVAILABLE
    labels = kube_api.server.get_object("nodes", node)["metadata"]["labels"]
    assert labels["worldland.io/rental-status"] == "available"


def test_with_the_api_down_a_pass_tries_one_token_not_one_per_waiting_provider(onboarding, kube_api):
    """Kubernetes answers 503: the first failing token call ends the pass's token retries (each would wait
    its timeout); the providers not tried keep their error and get their tokens once the API is back."""
    fleet = onboarding.fleet
    ids = [f"rig-{n}" for n in range(5)]
    for pid in ids:
        fleet.register(registration(pid))
        fleet.store.transition(pid, Status.APPROVED)
        fleet.store.set_error(pid, "token: an earlier failure")
    with kube_api.server.outage(503):
        report = onboarding.reconcile()
    assert sorted(report.tokens_failed) == ids and report.tokens_deferred == 4 and report.tokens_issued == 0
    errors = {pid: fleet.store.require(pid).last_error for pid in ids}
    tried = [pid for pid, error in errors.items() if error != "token: an earlier failure"]
    assert len(tried) == 1 and "KubeUnavailable" in errors[tried[0]], errors
    report = onboarding.reconcile()
    assert report.tokens_issued == 5 and report.tokens_failed == [] and report.tokens_deferred == 0
    assert all(fleet.store.require(pid).last_error == "" for pid in ids)


def test_an_onboarding_error_is_left_alone_and_no_token_is_sent_again(onboarding, client, names):
    """Found by a 20-host demo: the reconcile took any ``last_error`` for a failed token, sent the provider
    its token again (a second answer) and cleared the error onboard.yml's rescue had just recorded, so
    the failed host showed no error. Only a token's own failure is retried now."""
    fleet = onboarding.fleet
    fleet.register(registration("rig-join"))
    assert onboarding.approve("rig-join")
    agent = Agent(client, names)
    assert agent.await_answer("rig-join")["status"] == "approved"
    error = "Join the cluster: kubeadm join failed (exit 1): error execution phase kubelet-start"
    fleet.store.set_error("rig-join", error)
    onboarding.clock.now += 3 * TOKEN_RETRY_AFTER_S
    assert onboarding.reconcile().tokens_issued == 0
    assert fleet.store.require("rig-join").last_error == error
    assert len(client.xrange(names.response("rig-join"))) == 1
    # the join values the next run reads keep it too, until that run records its own outcome
    onboarding.join_values("rig-join")
    assert fleet.store.require("rig-join").last_error == error

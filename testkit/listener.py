"""A listener with test settings (short blocks, no periodic reconcile), and running it until idle."""

from __future__ import annotations

from worldland.control.listener import Listener, ListenerSettings
from worldland.control.onboarding import Onboarding
from worldland.domain.policy import ApprovalPolicy
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet


def make_listener(
    fleet: Fleet, names: StreamNames, policy: ApprovalPolicy, cluster=None, **settings
) -> Listener:
    onboarding = Onboarding(fleet=fleet, streams=names, policy=policy, cluster=cluster)
    defaults = {"block_ms": 50, "consumer": "test-consumer", "reconcile_every_s": 3600}
    return Listener(onboarding, ListenerSettings(**{**defaults, **settings}))


def drain(listener: Listener, rounds: int = 20) -> None:
    """Run until nothing new arrives (bounded)."""
    for _ in range(rounds):
        if listener.run_once() == 0:
            return

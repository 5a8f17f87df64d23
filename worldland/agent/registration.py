"""The registration this machine sends, and registering: publish, then wait for the listener's answer.

The message is checked with the domain's own rules before it leaves (``check_registration``), so the
listener never refuses a field this agent could have caught.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from worldland import __version__
from worldland.agent.config import AgentSettings
from worldland.agent.discovery import HostFacts
from worldland.agent.wire import AgentWire
from worldland.domain.names import canonical_gpu_model
from worldland.domain.registration import Registration, check_registration
from worldland.protocol.messages import RegistrationRequest, RegistrationResponse, parse_message
from worldland.protocol.status import Status
from worldland.protocol.streams import rfc3339_now


class Outcome(IntEnum):
    """``worldland-provider register``'s exit codes (documented in its ``--help``)."""

    APPROVED = 0  # approved (or already joined/available): a join token or the node's state came back
    PENDING = 10  # registered; waiting for an operator's approval
    REJECTED = 11  # refused; the answer says why
    TIMEOUT = 12  # no answer in time
    REDIS_UNREACHABLE = 13
    INVALID = 2  # a setting (or what discovery found) is not valid


def outcome_of(answer: RegistrationResponse) -> Outcome:
    if answer.status is Status.PENDING:
        return Outcome.PENDING
    if not answer.success or answer.status is Status.REJECTED:
        return Outcome.REJECTED
    return Outcome.APPROVED


def build_message(settings: AgentSettings, facts: HostFacts) -> dict[str, Any]:
    """The registration in the Go agent's shape: spec as discovered, capacity per model keyed by the
    GPU's raw name (as the Go agent sends it), prices from the settings for the models present."""
    wallet = settings.require_wallet()
    spec = facts.spec()
    per_name: dict[str, int] = {}
    for gpu in facts.gpus.devices:
        per_name[gpu.name] = per_name.get(gpu.name, 0) + 1
    present = {canonical_gpu_model(name) for name in per_name}
    prices = {model: price for model, price in settings.gpu_prices_per_hour.items() if model in present}
    capacity: dict[str, Any] = {
        "gpu_count": len(facts.gpus.devices),
        "cpu_cores": facts.cpu_cores,
        "memory_mb": facts.total_memory_mb,
        "total_gpus": per_name,
        "available_gpus": per_name,
        "gpu_prices_per_hour": prices,
    }
    return {
        "provider_id": settings.provider_id,
        "wallet_addr": wallet,
        "spec": spec,
        "capacity": capacity,
        "agent_version": __version__,
        "timestamp": rfc3339_now(),
    }


def checked(message: dict[str, Any]) -> Registration:
    """The message as the listener will read it; ``MessageError`` naming the field if it would refuse it."""
    request = parse_message(RegistrationRequest, json.dumps(message), allow_private_ips=True)
    return check_registration(request)


@dataclass(frozen=True, slots=True)
class RegisterResult:
    outcome: Outcome
    answer: RegistrationResponse | None


def register(wire: AgentWire, message: dict[str, Any], timeout_s: float) -> RegisterResult:
    """Publish the registration (answer group ready first) and wait up to ``timeout_s`` for its answer."""
    wire.prepare_answers()
    wire.publish_registration(message)
    answer = wire.wait_for_answer(timeout_s, clock=time.monotonic)
    if answer is None:
        return RegisterResult(Outcome.TIMEOUT, None)
    return RegisterResult(outcome_of(answer), answer)

"""The provider state machine: every one of the 7 x 7 transitions, Offline recovery, and Removed."""

from __future__ import annotations

import itertools

import pytest

from worldland.domain.lifecycle import (
    CLOSED_STATES,
    LIVE_STATES,
    REMOVABLE_STATES,
    TRANSITIONS,
    Status,
    TransitionError,
    check_transition,
)

S = Status
# The table from DESIGN.md ("Provider lifecycle"), written out independently of TRANSITIONS.
LEGAL = {
    (S.PENDING, S.APPROVED),
    (S.PENDING, S.REJECTED),
    (S.APPROVED, S.JOINED),
    (S.APPROVED, S.OFFLINE),
    (S.APPROVED, S.REJECTED),
    (S.JOINED, S.AVAILABLE),
    (S.JOINED, S.OFFLINE),
    (S.AVAILABLE, S.JOINED),
    (S.AVAILABLE, S.OFFLINE),
    (S.OFFLINE, S.APPROVED),
    (S.OFFLINE, S.JOINED),
    (S.OFFLINE, S.AVAILABLE),
    (S.REJECTED, S.PENDING),
    # offboarding: from every state an approved provider can be in; only a registration starts it over
    (S.APPROVED, S.REMOVED),
    (S.JOINED, S.REMOVED),
    (S.AVAILABLE, S.REMOVED),
    (S.OFFLINE, S.REMOVED),
    (S.REMOVED, S.PENDING),
}
ALL_PAIRS = list(itertools.product(Status, Status))


def test_seven_states() -> None:
    # Removed last: the order of the store's status index keys (the Lua header's STATUS_ORDER)
    assert [s.value for s in Status] == [
        "pending", "approved", "joined", "available", "offline", "rejected", "removed"
    ]  # fmt: skip
    assert len(ALL_PAIRS) == 49
    assert frozenset({S.APPROVED, S.JOINED, S.AVAILABLE}) == LIVE_STATES
    assert frozenset({S.REJECTED, S.REMOVED}) == CLOSED_STATES


def test_removable_states_are_those_the_table_lets_go_removed() -> None:
    assert {s for s, targets in TRANSITIONS.items() if S.REMOVED in targets} == REMOVABLE_STATES
    assert {S.APPROVED, S.JOINED, S.AVAILABLE, S.OFFLINE} == REMOVABLE_STATES


@pytest.mark.parametrize("previous", sorted(LIVE_STATES))
def test_an_offline_provider_is_removed_whatever_it_was_before(previous: Status) -> None:
    check_transition("p-1", S.OFFLINE, S.REMOVED, previous=previous)
    check_transition("p-1", S.OFFLINE, S.REMOVED)  # no previous recorded: still removable


def test_transitions_table_is_the_designed_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_every_pair(current: Status, target: Status) -> None:
    # Offline's legal moves are checked with the state held before it; the others ignore ``previous``.
    previous = target if current is S.OFFLINE and target in LIVE_STATES else None
    if (current, target) in LEGAL:
        check_transition("p-1", current, target, previous)
    else:
        with pytest.raises(TransitionError) as info:
            check_transition("p-1", current, target, previous)
        error = info.value
        assert (error.provider_id, error.current, error.target) == ("p-1", current, target)
        assert f"from {current} to {target}" in str(error)


@pytest.mark.parametrize("state", list(Status))
def test_no_state_goes_to_itself(state: Status) -> None:
    with pytest.raises(TransitionError):
        check_transition("p-1", state, state, previous=state)


@pytest.mark.parametrize(
    ("previous", "target"), list(itertools.product(sorted(LIVE_STATES), sorted(LIVE_STATES)))
)
def test_offline_recovers_only_to_previous(previous: Status, target: Status) -> None:
    if previous == target:
        check_transition("p-1", S.OFFLINE, target, previous=previous)
    else:
        with pytest.raises(TransitionError, match="previous state"):
            check_transition("p-1", S.OFFLINE, target, previous=previous)


@pytest.mark.parametrize("target", sorted(set(Status) - {S.REMOVED}))
def test_offline_without_previous_goes_nowhere_but_removed(target: Status) -> None:
    with pytest.raises(TransitionError):
        check_transition("p-1", S.OFFLINE, target)


@pytest.mark.parametrize("previous", [S.PENDING, S.REJECTED, S.OFFLINE])
def test_offline_never_recovers_to_a_state_that_is_not_live(previous: Status) -> None:
    with pytest.raises(TransitionError):
        check_transition("p-1", S.OFFLINE, previous, previous=previous)


@pytest.mark.parametrize("state", list(Status))
def test_only_live_states_go_offline(state: Status) -> None:
    if state in LIVE_STATES:
        check_transition("p-1", state, S.OFFLINE)
    else:
        with pytest.raises(TransitionError):
            check_transition("p-1", state, S.OFFLINE)


def test_previous_is_ignored_outside_offline() -> None:
    check_transition("p-1", S.JOINED, S.AVAILABLE, previous=S.PENDING)


def test_plain_strings_as_read_back_from_a_store() -> None:
    check_transition("p-1", "pending", "approved")  # type: ignore[arg-type]
    check_transition("p-1", "offline", "joined", "joined")  # type: ignore[arg-type]
    with pytest.raises(TransitionError, match="previous state"):
        check_transition("p-1", "offline", "available", "joined")  # type: ignore[arg-type]
    with pytest.raises(TransitionError):
        check_transition("p-1", "pending", "joined")  # type: ignore[arg-type]


@pytest.mark.parametrize(("current", "target"), [("busy", "available"), ("pending", "busy"), ("", "pending")])
def test_unknown_states_are_transition_errors(current: str, target: str) -> None:
    with pytest.raises(TransitionError):
        check_transition("p-1", current, target)  # type: ignore[arg-type]


def test_transition_error_is_a_value_error_that_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="pending may only go to approved, rejected"):
        check_transition("p-1", S.PENDING, S.JOINED)

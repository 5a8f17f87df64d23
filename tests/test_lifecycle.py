"""The provider state machine: every one of the 6 x 6 transitions, and Offline recovery."""

from __future__ import annotations

import itertools

import pytest

from worldland.domain.lifecycle import LIVE_STATES, TRANSITIONS, Status, TransitionError, check_transition

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
}
ALL_PAIRS = list(itertools.product(Status, Status))


def test_six_states() -> None:
    assert [s.value for s in Status] == ["pending", "approved", "joined", "available", "offline", "rejected"]
    assert len(ALL_PAIRS) == 36
    assert frozenset({S.APPROVED, S.JOINED, S.AVAILABLE}) == LIVE_STATES


def test_transitions_table_is_the_designed_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_every_pair(current: Status, target: Status) -> None:
    # Offline's legal moves are checked with the state held before it; the others ignore ``previous``.
    previous = target if current is S.OFFLINE else None
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


@pytest.mark.parametrize("target", list(Status))
def test_offline_without_previous_goes_nowhere(target: Status) -> None:
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

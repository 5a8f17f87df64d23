"""The Lua pieces in worldland/state/lua/: each compiles in Redis, each is used, and the generated
header says what worldland.domain.lifecycle says."""

from __future__ import annotations

import hashlib
import json

import pytest
import redis

from worldland.control import audit
from worldland.domain.lifecycle import CLOSED_STATES, LIVE_STATES, NODE_STATES, TRANSITIONS
from worldland.state import heartbeats, ledger, providers, scripts

# Every script a module registers with Redis, as composed at import.
REGISTERED = {
    "providers._TRANSITION_SCRIPT": providers._TRANSITION_SCRIPT,
    "providers._REGISTER_SCRIPT": providers._REGISTER_SCRIPT,
    "providers._SET_IF_EXISTS_SCRIPT": providers._SET_IF_EXISTS_SCRIPT,
    "ledger._SET_TOTALS": ledger._SET_TOTALS,
    "ledger._ALLOCATE_MANY": ledger._ALLOCATE_MANY,
    "ledger._RELEASE_MANY": ledger._RELEASE_MANY,
    "ledger._SET_MINING": ledger._SET_MINING,
    "heartbeats._RECORD_SCRIPT": heartbeats._RECORD_SCRIPT,
    "audit._LIVENESS_SCRIPT": audit._LIVENESS_SCRIPT,
    "audit._LOCK_RELEASE": audit._LOCK_RELEASE,
    "audit._LOCK_REFRESH": audit._LOCK_REFRESH,
    "audit._UNMARK": audit._UNMARK,
}


def _compiles(client: redis.Redis, text: str) -> None:
    """SCRIPT LOAD compiles without running: a syntax error is a ResponseError naming the line."""
    assert client.script_load(text) == hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def test_every_piece_is_found() -> None:
    names = scripts.names()
    assert "transition_functions" in names and "ledger_functions" in names
    assert len(names) == len(set(names)) >= 14


@pytest.mark.parametrize("name", scripts.names())
def test_each_piece_compiles_and_says_what_it_takes(redis_client: redis.Redis, name: str) -> None:
    text = scripts.source(name)
    assert text.startswith("-- "), f"{name}.lua starts with its comment block"
    for word in ("KEYS", "ARGV", "Returns"):
        assert word in text.split("\n\n", 1)[0], f"{name}.lua's comment block names its {word}"
    _compiles(redis_client, scripts.script(name))


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_each_registered_script_compiles(redis_client: redis.Redis, name: str) -> None:
    text = REGISTERED[name]
    assert text.startswith(scripts.header())
    _compiles(redis_client, text)


def test_every_piece_is_used() -> None:
    unused = [n for n in scripts.names() if not any(scripts.source(n) in s for s in REGISTERED.values())]
    assert unused == []


def test_header_is_the_lifecycle(redis_client: redis.Redis) -> None:
    """Lua itself reads the header back: the tables are the lifecycle's, and the status order is the
    order of the store's status index keys."""
    probe = scripts.header() + (
        "return cjson.encode({ALLOWED, STATUS_ORDER, NODE_STATES, LIVE_STATES, CLOSED_STATES})"
    )
    allowed, order, node_states, live_states, closed = json.loads(redis_client.eval(probe, 0))
    assert allowed == {s.value: {t.value: True for t in targets} for s, targets in TRANSITIONS.items()}
    assert order == [s.value for s in providers.STATUS_ORDER]
    assert node_states == {s.value: True for s in NODE_STATES}
    assert live_states == {s.value: True for s in LIVE_STATES}
    assert closed == {s.value: True for s in CLOSED_STATES}


def test_transition_keys_are_found_by_the_status_count_not_by_numbers(redis_client: redis.Redis) -> None:
    """The Lua finds node-sync, the grace set and a script's own keys after the status index sets by
    #STATUS_ORDER: the positions ProviderStore.transition_keys() gives them, whatever the statuses."""
    store = providers.ProviderStore(redis_client)
    keys = ["provider", *store.transition_keys(), "own"]
    probe = scripts.script("transition_functions") + (
        "\nreturn {node_sync_key(2), awaiting_key(2), KEYS[after_transition_keys(2)]}"
    )
    assert redis_client.eval(probe, len(keys), *keys) == [
        store.keys.node_sync,
        store.keys.awaiting_first_beat,
        "own",
    ]


def test_header_keys_that_are_not_identifiers_are_quoted() -> None:
    assert scripts._key("pending") == "pending"
    assert scripts._key("end") == '["end"]'
    assert scripts._key("not-one") == '["not-one"]'


def test_script_composes_pieces_in_order() -> None:
    text = scripts.script("transition_functions", "provider_transition")
    head, functions, body = (
        text.index(scripts.header()),
        text.index(scripts.source("transition_functions")),
        text.index(scripts.source("provider_transition")),
    )
    assert head == 0 < functions < body


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="piece name"):
        scripts.source("../keys")
    with pytest.raises(FileNotFoundError):
        scripts.source("no_such_piece")
    with pytest.raises(ValueError, match="at least one"):
        scripts.script()

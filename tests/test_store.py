from __future__ import annotations

import threading

import pytest
import redis

from testkit.clock import FakeClock
from testkit.factories import registration, wallet_for
from testkit.fleet import put_in
from worldland.domain.lifecycle import TRANSITIONS, Status, TransitionError
from worldland.domain.names import node_name
from worldland.state.connection import connect
from worldland.state.keys import Keys
from worldland.state.ledger import CapacityError, CapacityLedger
from worldland.state.providers import (
    ProviderStore,
    StatusConflict,
    UnknownProvider,
    WalletMismatch,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys, clock: FakeClock) -> ProviderStore:
    return ProviderStore(redis_client, keys, clock)


def test_registration_creates_pending_provider_with_unique_node_name(store: ProviderStore, clock: FakeClock):
    result = store.upsert_registration(registration("p-1", hostname="gpu-server-01"))
    assert result.created
    record = result.record
    assert record.status is Status.PENDING
    assert record.node_name == node_name("gpu-server-01", "p-1")
    assert record.wallet_addr == wallet_for("p-1")
    assert record.gpu_models == ["RTX-4090"]
    assert record.created_at == clock.now
    assert record.spec["hostname"] == "gpu-server-01"
    assert store.ids([Status.PENDING]) == ["p-1"]


def test_registration_is_idempotent_and_updates_details_without_touching_status(store: ProviderStore, clock):
    store.upsert_registration(registration("p-1"))
    store.transition("p-1", Status.APPROVED)
    clock.now += 10
    again = store.upsert_registration(registration("p-1", public_ip="123.45.67.100"))
    assert not again.created
    assert again.record.status is Status.APPROVED
    assert again.record.public_ip == "123.45.67.100"
    assert again.record.updated_at == clock.now
    assert store.counts()["approved"] == 1
    assert store.counts()["pending"] == 0


def test_provider_id_is_bound_to_its_first_wallet(store: ProviderStore):
    store.upsert_registration(registration("p-1"))
    with pytest.raises(WalletMismatch, match="another wallet"):
        store.upsert_registration(registration("p-1", wallet=wallet_for("someone else")))
    assert store.require("p-1").wallet_addr == wallet_for("p-1")
    # The same address in another letter case is the same wallet.
    store.upsert_registration(registration("p-1", wallet=wallet_for("p-1").upper().replace("0X", "0x")))


def test_node_names_stay_unique_when_the_short_hash_collides(store: ProviderStore, redis_client, keys):
    # Another provider already holds the name p-2 would get first.
    redis_client.set(keys.node_claim(node_name("same-host", "p-2")), "p-1")
    record = store.upsert_registration(registration("p-2", hostname="same-host")).record
    assert record.node_name == node_name("same-host", "p-2", attempt=1)
    assert redis_client.get(keys.node_claim(record.node_name)) == "p-2"


def test_same_hostname_for_two_providers_gives_two_node_names(store: ProviderStore):
    a = store.upsert_registration(registration("p-a", hostname="rig")).record
    b = store.upsert_registration(registration("p-b", hostname="rig")).record
    assert a.node_name != b.node_name


ALL_PAIRS = [(s, t) for s in Status for t in Status if s is not t]


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=[f"{s}->{t}" for s, t in ALL_PAIRS])
def test_transition_table_is_enforced_in_redis(store: ProviderStore, source: Status, target: Status):
    put_in(store, "p", source)
    # put_in reaches Offline from Available: of the live states only Available is its way back
    legal = target in TRANSITIONS[source] and (
        source is not Status.OFFLINE or target in (Status.AVAILABLE, Status.REMOVED)
    )
    if legal:
        result = store.transition("p", target)
        assert result.changed and result.previous is source and result.current is target
        assert store.require("p").status is target
        assert store.ids([target]) == ["p"]
        assert store.ids([source]) == []
    else:
        with pytest.raises(TransitionError):
            store.transition("p", target)
        assert store.require("p").status is source
        assert store.ids([source]) == ["p"]
    assert sum(store.counts().values()) == 1


@pytest.mark.parametrize("before", [Status.APPROVED, Status.JOINED, Status.AVAILABLE])
def test_offline_remembers_and_returns_to_the_previous_live_state(store: ProviderStore, before: Status):
    put_in(store, "p", Status.OFFLINE, previous=before)
    record = store.require("p")
    assert record.status is Status.OFFLINE
    assert record.previous_status is before
    for wrong in {Status.APPROVED, Status.JOINED, Status.AVAILABLE} - {before}:
        with pytest.raises(TransitionError, match="previous state"):
            store.transition("p", wrong)
    result = store.recover("p")
    assert result.current is before
    assert store.require("p").previous_status is None


def test_same_state_is_a_noop_not_an_error(store: ProviderStore, clock: FakeClock):
    put_in(store, "p", Status.APPROVED)
    changed_at = store.require("p").status_changed_at
    clock.now += 5
    result = store.transition("p", Status.APPROVED)
    assert not result.changed
    assert store.require("p").status_changed_at == changed_at


def test_unknown_provider_and_compare_and_set(store: ProviderStore):
    with pytest.raises(UnknownProvider):
        store.transition("nobody", Status.APPROVED)
    put_in(store, "p", Status.PENDING)
    with pytest.raises(StatusConflict, match="is pending, not approved"):
        store.transition("p", Status.JOINED, expected=Status.APPROVED)
    assert store.require("p").status is Status.PENDING


def test_reject_records_reason_and_approve_records_time(store: ProviderStore, clock: FakeClock):
    put_in(store, "a", Status.PENDING)
    put_in(store, "r", Status.PENDING)
    clock.now += 7
    store.transition("a", Status.APPROVED)
    store.transition("r", Status.REJECTED, reason="GPU model not accepted")
    assert store.require("a").approved_at == clock.now
    assert store.require("r").status_reason == "GPU model not accepted"


def test_concurrent_transitions_apply_once(redis_server, keys: Keys):
    """Many writers race to approve and reject the same pending providers: each ends in exactly one state."""
    setup = ProviderStore(connect(redis_server.url), keys)
    ids = [f"p-{i}" for i in range(20)]
    for pid in ids:
        setup.upsert_registration(registration(pid))
    wins: list[tuple[str, Status]] = []
    lock = threading.Lock()

    def race(target: Status) -> None:
        store = ProviderStore(connect(redis_server.url), keys)
        for pid in ids:
            try:
                if store.transition(pid, target, expected=Status.PENDING).changed:
                    with lock:
                        wins.append((pid, target))
            except (TransitionError, StatusConflict):
                pass

    threads = [threading.Thread(target=race, args=(t,)) for t in [Status.APPROVED, Status.REJECTED] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(pid for pid, _ in wins) == sorted(ids)  # every provider changed exactly once
    counts = setup.counts()
    assert counts["approved"] + counts["rejected"] == len(ids)
    assert counts["pending"] == 0
    for pid, target in wins:
        assert setup.require(pid).status is target


def test_listing_round_trips(store: ProviderStore, monkeypatch):
    for i in range(5):
        store.upsert_registration(registration(f"p-{i}"))
    calls = {"execute": 0}
    real = redis.client.Pipeline.execute

    def counting(self, *args, **kwargs):
        calls["execute"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    monkeypatch.setattr("worldland.state.providers.LIST_CHUNK", 2)
    assert len(store.list()) == 5
    assert calls["execute"] == 3  # ceil(5 / 2) pipelines, not 5 round trips


# -- issue 9: a refused registration writes nothing ------------------------------------------------


def test_a_registration_from_another_wallet_writes_neither_record_nor_ledger(
    store: ProviderStore, redis_client: redis.Redis, keys: Keys
):
    ledger = CapacityLedger(redis_client, keys)
    store.upsert_registration(registration("victim", gpus=2))
    record, capacity = store.require("victim"), ledger.get("victim")
    impostor = registration("victim", gpus=1, gpu_name="NVIDIA H100 80GB HBM3", wallet="0x" + "ab" * 20)
    with pytest.raises(WalletMismatch):
        store.upsert_registration(impostor)
    assert ledger.get("victim") == capacity  # before the fix: the ledger was replaced first
    assert store.require("victim") == record


def test_a_registration_whose_ledger_is_refused_leaves_the_record_as_it_was(
    store: ProviderStore, redis_client: redis.Redis, keys: Keys
):
    ledger = CapacityLedger(redis_client, keys)
    store.upsert_registration(registration("busy", gpus=4))
    put_in(store, "busy", Status.AVAILABLE)
    ledger.allocate("job-1", "busy", "RTX-4090", 3, 2, 1024)
    record, capacity = store.require("busy"), ledger.get("busy")
    with pytest.raises(CapacityError, match="3 in use by jobs"):
        store.upsert_registration(registration("busy", gpus=2, hostname="renamed"))
    assert store.require("busy") == record
    assert ledger.get("busy") == capacity


def test_a_registration_sets_record_and_ledger_together(
    store: ProviderStore, redis_client: redis.Redis, keys: Keys
):
    ledger = CapacityLedger(redis_client, keys)
    store.upsert_registration(registration("both", gpus=3, cpu_cores=16, memory_mb=65536))
    capacity = ledger.get("both")
    assert capacity.gpus["RTX-4090"].total == 3
    assert (capacity.cpu.total, capacity.memory.total) == (16, 65536)
    assert store.require("both").gpu_models == ["RTX-4090"]

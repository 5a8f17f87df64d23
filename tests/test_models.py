"""Wire messages: both registration shapes, heartbeats, responses, and hostile input (DESIGN.md)."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import PROTOCOL, SHARED_PROTOCOL, load_go_agent, load_protocol
from worldland.domain.lifecycle import Status
from worldland.domain.names import canonical_gpu_model
from worldland.domain.registration import gpu_counts, gpu_prices, parse_registration
from worldland.protocol.messages import (
    MAX_MESSAGE_BYTES,
    MessageError,
    RegistrationRequest,
    RegistrationResponse,
    eip55_checksum,
    parse_capacity_update,
    parse_heartbeat,
)

AGENT_WALLET = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"
# EIP-55's own test vectors (all mixed case, all valid).
EIP55_VECTORS = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]
DELETE = object()


def agent_doc() -> dict[str, Any]:
    return load_protocol("registration.agent.json")


def seed_doc(wallet: str = EIP55_VECTORS[0]) -> dict[str, Any]:
    doc = load_protocol("registration.seed.json")
    doc["wallet_addr"] = wallet
    return doc


def with_value(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``path`` set to ``value`` (or removed, for ``DELETE``)."""
    doc = copy.deepcopy(doc)
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def dumps(doc: Any) -> str:
    return json.dumps(doc)


def refused(
    parse: Callable[..., Any], raw: str | bytes, field: str, fragment: str, **kwargs: Any
) -> MessageError:
    with pytest.raises(MessageError) as info:
        parse(raw, **kwargs)
    error = info.value
    assert error.field == field, f"field {error.field!r} (reason {error.reason!r}), expected {field!r}"
    assert fragment.lower() in error.reason.lower(), f"reason {error.reason!r} lacks {fragment!r}"
    assert str(error) == f"{error.field}: {error.reason}"
    return error


def refused_registration(doc: Any, field: str, fragment: str, **kwargs: Any) -> MessageError:
    return refused(parse_registration, dumps(doc), field, fragment, **kwargs)


def spec_value(path: str, value: Any) -> dict[str, Any]:
    return with_value(agent_doc(), ("spec", path), value)


# -- the examples ---------------------------------------------------------------------------------


def test_agent_registration_example_parses() -> None:
    request = parse_registration(dumps(agent_doc()))
    assert request.provider_id == AGENT_WALLET
    assert request.wallet_addr == AGENT_WALLET
    spec = request.spec
    assert (spec.hostname, spec.public_ip, spec.private_ip) == ("rig-07", "123.45.67.90", "10.0.0.7")
    assert (spec.cpu_cores, spec.cpu_threads, spec.total_memory_mb, spec.total_gpus) == (32, 64, 257698, 2)
    assert [g.memory_mb for g in spec.gpus] == [81920, 81920]
    assert [g.index for g in spec.gpus] == [0, 1]
    assert gpu_counts(spec) == {"A100-SXM4-80GB": 2}
    assert request.offered_gpus() == {"A100-SXM4-80GB": 2}
    assert request.totals.cpu_cores == 25
    assert request.totals.memory_mb == 206158
    assert request.gpu_prices() == {"A100-SXM4-80GB": 1.2, "*": 0.0}  # "*": the seed-style one price
    assert request.capacity.gpu_price_per_hour == 0
    assert request.request.agent_version == "1.0.0"
    assert request.request.timestamp is not None and request.request.timestamp.year == 2026


def test_agent_registration_example_parses_from_bytes() -> None:
    assert parse_registration(dumps(agent_doc()).encode()).provider_id == AGENT_WALLET


def test_seed_example_placeholder_wallet_is_refused_as_a_placeholder() -> None:
    raw = (PROTOCOL / "registration.seed.json").read_text()
    error = refused(parse_registration, raw, "wallet_addr", "placeholder")
    assert "40 hexadecimal digits" in error.reason


def test_seed_example_parses_once_the_placeholder_is_replaced() -> None:
    request = parse_registration(dumps(seed_doc()))
    assert request.provider_id == "provider-uuid"
    spec = request.spec
    assert spec.total_gpus == 4
    assert len(spec.gpus) == 1  # one entry standing for all four
    assert spec.gpus[0].memory_mb == 24576  # the seed's "memory" is the agent's "memory_mb"
    assert canonical_gpu_model(spec.gpus[0].name) == "RTX-4090"
    assert gpu_counts(spec) == {"RTX-4090": 4}
    assert request.offered_gpus() == {"RTX-4090": 4}
    assert request.totals.cpu_cores == 32
    assert request.totals.memory_mb == 131072
    assert request.capacity.gpu_price_per_hour == 0.5
    assert spec.available_disk_gb == 500


def test_heartbeat_example_parses() -> None:
    heartbeat = parse_heartbeat(dumps(load_protocol("heartbeat.agent.json")))
    assert heartbeat.provider_id == AGENT_WALLET
    assert heartbeat.node_name == "rig-07-3f5ce5"
    assert heartbeat.status == "available"  # the agent's own claim: information, not lifecycle state
    assert heartbeat.gpu_usage == [12.5, 0.0]
    assert (heartbeat.cpu_usage, heartbeat.memory_usage, heartbeat.active_jobs) == (7.25, 31.0, 1)
    assert heartbeat.timestamp is not None


def test_response_example_round_trips_through_to_wire() -> None:
    example = load_protocol("response.example.json")
    response = RegistrationResponse.model_validate_json(dumps(example))
    assert response.status is Status.APPROVED
    assert json.loads(response.to_wire()) == example


def test_response_to_wire_leaves_out_absent_fields_and_repr_hides_the_token() -> None:
    pending = RegistrationResponse(success=True, status=Status.PENDING, message="waiting for approval")
    assert json.loads(pending.to_wire()) == {
        "success": True,
        "status": "pending",
        "message": "waiting for approval",
    }
    approved = RegistrationResponse.model_validate_json(dumps(load_protocol("response.example.json")))
    assert "abcdef.0123456789abcdef" not in repr(approved)


def test_capacity_update_accepts_nested_and_flat_shapes() -> None:
    nested = parse_capacity_update(
        dumps({"provider_id": "p-1", "capacity": {"gpu_prices_per_hour": {"NVIDIA H100": 2}}})
    )
    flat = parse_capacity_update(dumps({"provider_id": "p-1", "gpu_prices_per_hour": {"NVIDIA H100": 2}}))
    assert gpu_prices(nested.capacity) == gpu_prices(flat.capacity) == {"H100": 2.0}
    refused(parse_capacity_update, dumps({"capacity": {}}), "provider_id", "required")


@pytest.mark.skipif(not SHARED_PROTOCOL.is_dir(), reason="../shared/protocol is not beside this checkout")
def test_protocol_copies_match_shared() -> None:
    shared = sorted(p.name for p in SHARED_PROTOCOL.glob("*.json"))
    ours = sorted(p.name for p in PROTOCOL.glob("*.json"))
    assert shared == ours
    for name in shared:
        assert json.loads((PROTOCOL / name).read_text()) == json.loads(
            (SHARED_PROTOCOL / name).read_text()
        ), name


# -- provider_id ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider_id", ["a", "x" * 128, "prov-1.2_3:4", AGENT_WALLET, "A-Z.a_z:0-9"])
def test_provider_id_accepted(provider_id: str) -> None:
    assert (
        parse_registration(dumps(with_value(agent_doc(), ("provider_id",), provider_id))).provider_id
        == provider_id
    )


@pytest.mark.parametrize(
    "provider_id",
    ["", "x" * 129, "has space", "a/b", "a;id", "prov\n", "\nprov", "prov\x00", "prövider", "a$b", "{{x}}"],
)
def test_provider_id_refused(provider_id: str) -> None:
    refused_registration(
        with_value(agent_doc(), ("provider_id",), provider_id), "provider_id", "1 to 128 characters"
    )


# -- wallet_addr ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wallet",
    [
        *EIP55_VECTORS,
        AGENT_WALLET,
        AGENT_WALLET.lower(),
        "0x" + AGENT_WALLET[2:].upper(),
        "0x" + "0" * 40,
        "0x" + "F" * 40,
    ],
)
def test_wallet_accepted(wallet: str) -> None:
    assert parse_registration(dumps(with_value(agent_doc(), ("wallet_addr",), wallet))).wallet_addr == wallet


def test_eip55_checksum_matches_the_published_vectors() -> None:
    for vector in EIP55_VECTORS:
        assert eip55_checksum(vector.lower()) == vector
        assert eip55_checksum("0x" + vector[2:].upper()) == vector


def swap_case_of_first_letter(address: str) -> str:
    body = list(address[2:])
    i = next(i for i, c in enumerate(body) if c.isalpha())
    body[i] = body[i].swapcase()
    return "0x" + "".join(body)


@pytest.mark.parametrize(
    ("wallet", "fragment"),
    [
        (swap_case_of_first_letter(EIP55_VECTORS[0]), "EIP-55"),
        (swap_case_of_first_letter(AGENT_WALLET), "EIP-55"),
        ("0x1234...abcd", "placeholder"),
        ("0x" + "a" * 39, "40 hexadecimal digits"),
        ("0x" + "a" * 41, "40 hexadecimal digits"),
        ("a" * 40, "40 hexadecimal digits"),
        ("0X" + "a" * 40, "40 hexadecimal digits"),
        ("0x" + "g" * 40, "40 hexadecimal digits"),
        (AGENT_WALLET.lower() + "\n", "40 hexadecimal digits"),
        (" " + AGENT_WALLET, "40 hexadecimal digits"),
        ("", "40 hexadecimal digits"),
    ],
)
def test_wallet_refused(wallet: str, fragment: str) -> None:
    refused_registration(with_value(agent_doc(), ("wallet_addr",), wallet), "wallet_addr", fragment)


# -- hostname -------------------------------------------------------------------------------------


def dotted(total: int, label: int = 63) -> str:
    """A host name of exactly ``total`` characters made of ``label``-character labels."""
    parts: list[str] = []
    while sum(map(len, parts)) + len(parts) < total:
        room = total - (sum(map(len, parts)) + len(parts))
        parts.append("a" * min(label, room))
    name = ".".join(parts)
    assert len(name) == total, len(name)
    return name


@pytest.mark.parametrize(
    "hostname",
    [
        "a",
        "rig-07",
        "RIG-07",
        "gpu-server-01.example.com",
        "0",
        "x" * 63,
        dotted(253),
        "host.example.",
        "1-2-3",
    ],
)
def test_hostname_accepted(hostname: str) -> None:
    assert parse_registration(dumps(spec_value("hostname", hostname))).spec.hostname == hostname


HOSTILE_HOSTNAMES = [
    "rig;id",
    "rig && reboot",
    "$(id)",
    "`id`",
    "rig|nc",
    "rig>x",
    "{{ lookup('pipe','id') }}",
    "{% raw %}",
    "rig\nnode",
    "rig-07\n",
    "\nrig",
    "rig\r",
    "rig\t07",
    "rig 07",
    "rïg",
    "\u0440ig",  # Cyrillic er, looks like a Latin p
    "rig\u200b",
    "rig\x00",
    "-rig",
    "rig-",
    "a.-b",
    "rig_07",
    "a..b",
    "host..",
    ".",
    ".host",
    "a" * 64,
    "ok." + "a" * 64,
    "",
]


@pytest.mark.parametrize("hostname", HOSTILE_HOSTNAMES)
def test_hostile_hostname_refused(hostname: str) -> None:
    fragment = "1 to 253 characters" if hostname == "" else "RFC 1123"
    refused_registration(spec_value("hostname", hostname), "spec.hostname", fragment)


@pytest.mark.parametrize("length", [254, 300, 4000])
def test_overlong_hostname_refused(length: int) -> None:
    refused_registration(spec_value("hostname", dotted(length)), "spec.hostname", "at most 253")


# -- public_ip / private_ip -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("123.45.67.89", "123.45.67.89"),
        ("8.8.8.8", "8.8.8.8"),
        ("2606:4700:4700::1111", "2606:4700:4700::1111"),
        ("2606:4700:4700:0:0:0:0:1111", "2606:4700:4700::1111"),
    ],
)
def test_public_ip_accepted_and_normalised(address: str, normal: str) -> None:
    assert parse_registration(dumps(spec_value("public_ip", address))).spec.public_ip == normal


PRIVATE_ADDRESSES = [
    "10.0.0.7",
    "172.16.5.4",
    "192.168.1.10",
    "100.64.0.1",
    "fd00::1",
    "192.0.2.1",
    "2001:db8::1",
]


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_private_ip_refused_unless_the_policy_allows_it(address: str) -> None:
    refused_registration(spec_value("public_ip", address), "spec.public_ip", "not a public address")
    request = parse_registration(dumps(spec_value("public_ip", address)), allow_private_ips=True)
    assert request.spec.public_ip == address


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (an address to refuse, not to bind)
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("240.0.0.1", "reserved"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_unreachable_ip_always_refused(address: str, kind: str, allow_private: bool) -> None:
    refused_registration(
        spec_value("public_ip", address), "spec.public_ip", kind, allow_private_ips=allow_private
    )


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("not-an-ip", "not a valid IPv4 or IPv6"),
        ("", "not a valid IPv4 or IPv6"),
        ("1.2.3", "not a valid IPv4 or IPv6"),
        ("256.1.1.1", "not a valid IPv4 or IPv6"),
        ("001.002.003.004", "not a valid IPv4 or IPv6"),
        (" 8.8.8.8", "not a valid IPv4 or IPv6"),
        ("8.8.8.8\n", "not a valid IPv4 or IPv6"),
        ("8.8.8.8/32", "not a valid IPv4 or IPv6"),
        ("gpu.example.com", "not a valid IPv4 or IPv6"),
        ("2606:4700::1%eth0", "zone"),
        ("2606:4700::1%{{ lookup('pipe','id') }}", "zone"),
        ("1" * 65, "at most 64"),
    ],
)
def test_public_ip_malformed_refused(address: str, fragment: str) -> None:
    refused_registration(spec_value("public_ip", address), "spec.public_ip", fragment, allow_private_ips=True)


def test_private_ip_optional_and_validated() -> None:
    assert parse_registration(dumps(spec_value("private_ip", DELETE))).spec.private_ip is None
    assert parse_registration(dumps(spec_value("private_ip", ""))).spec.private_ip is None
    assert parse_registration(dumps(spec_value("private_ip", None))).spec.private_ip is None
    refused_registration(
        spec_value("private_ip", "10.0.0.300"), "spec.private_ip", "not a valid IPv4 or IPv6"
    )
    refused_registration(spec_value("private_ip", "fd00::1%$(id)"), "spec.private_ip", "zone")


# -- counts, sizes and prices ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "cpu_cores"), 0),
        (("spec", "cpu_cores"), 4096),
        (("spec", "total_memory_mb"), 0),
        (("spec", "total_memory_mb"), 64 * 1024 * 1024),
        (("capacity", "gpu_price_per_hour"), 0.0),
        (("capacity", "cpu_price_per_hour"), 3),
    ],
)
def test_bounds_accepted(path: tuple[str, ...], value: Any) -> None:
    parse_registration(dumps(with_value(agent_doc(), path, value)))


def gpus_doc(total: int | None, entries: int) -> dict[str, Any]:
    doc = agent_doc()
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}
    doc["spec"]["gpus"] = [dict(gpu, index=i) if entries > 1 else dict(gpu) for i in range(entries)]
    if total is None:
        del doc["spec"]["total_gpus"]
    else:
        doc["spec"]["total_gpus"] = total
    del doc["capacity"]["total_gpus"]
    del doc["capacity"]["available_gpus"]
    return doc


@pytest.mark.parametrize(
    ("total", "entries", "counts"),
    [
        (64, 64, {"H100-80GB-HBM3": 64}),
        (64, 1, {"H100-80GB-HBM3": 64}),
        (4, 4, {"H100-80GB-HBM3": 4}),
        (4, 1, {"H100-80GB-HBM3": 4}),
        (1, 1, {"H100-80GB-HBM3": 1}),
        (0, 0, {}),
        (None, 3, {"H100-80GB-HBM3": 3}),
        (None, 0, {}),
    ],
)
def test_gpus_one_per_device_or_one_for_all(total: int | None, entries: int, counts: dict[str, int]) -> None:
    spec = parse_registration(dumps(gpus_doc(total, entries))).spec
    assert gpu_counts(spec) == counts
    assert spec.total_gpus == sum(counts.values())


@pytest.mark.parametrize(
    ("total", "entries"), [(4, 3), (4, 2), (4, 5), (2, 3), (0, 1), (0, 2), (8, 0), (1, 2)]
)
def test_gpus_count_mismatch_names_both_numbers(total: int, entries: int) -> None:
    error = refused_registration(gpus_doc(total, entries), "spec.gpus", f"total_gpus is {total}")
    assert f"{entries} entries" in error.reason


def test_gpus_omitted_with_nonzero_total_refused() -> None:
    doc = gpus_doc(4, 0)
    del doc["spec"]["gpus"]
    refused_registration(doc, "spec.gpus", "total_gpus is 4")


def test_mixed_models_counted_per_canonical_model() -> None:
    doc = gpus_doc(3, 3)
    doc["spec"]["gpus"][2]["name"] = "NVIDIA GeForce RTX 4090"
    assert parse_registration(dumps(doc)).hardware == {"H100-80GB-HBM3": 2, "RTX-4090": 1}


def test_capacity_may_not_offer_more_gpus_than_the_spec_lists() -> None:
    doc = with_value(agent_doc(), ("capacity", "total_gpus"), {"NVIDIA A100-SXM4-80GB": 3})
    error = refused_registration(doc, "capacity.total_gpus", "offers 3 A100-SXM4-80GB")
    assert "spec lists 2" in error.reason
    doc = with_value(agent_doc(), ("capacity", "total_gpus"), {"NVIDIA H100": 1})
    refused_registration(doc, "capacity.total_gpus", "spec lists 0")


def test_offer_below_hardware_is_what_goes_to_the_ledger() -> None:
    doc = with_value(agent_doc(), ("capacity", "total_gpus"), {"NVIDIA A100-SXM4-80GB": 1})
    doc["capacity"]["available_gpus"] = {"NVIDIA A100-SXM4-80GB": 1}
    doc["capacity"]["cpu_cores"] = 99999 // 100  # more than the spec has: capped at the spec's 32
    request = parse_registration(dumps(doc))
    assert request.offered_gpus() == {"A100-SXM4-80GB": 1}
    assert request.totals.cpu_cores == 32


# -- the whole message ----------------------------------------------------------------------------


def test_message_size_limit() -> None:
    doc = agent_doc()
    base = len(dumps(dict(doc, padding="")).encode())
    at_limit = dumps(dict(doc, padding="x" * (MAX_MESSAGE_BYTES - base)))
    assert len(at_limit.encode()) == MAX_MESSAGE_BYTES
    parse_registration(at_limit)
    over = dumps(dict(doc, padding="x" * (MAX_MESSAGE_BYTES - base + 1)))
    refused(parse_registration, over, "message", f"at most {MAX_MESSAGE_BYTES}")
    refused(parse_registration, over.encode(), "message", f"at most {MAX_MESSAGE_BYTES}")
    refused(parse_heartbeat, b" " * (MAX_MESSAGE_BYTES + 1), "message", "bytes")


def test_size_counts_bytes_not_characters() -> None:
    doc = agent_doc()
    base = len(dumps(dict(doc, padding="")).encode())
    # Each "é" is one character but two UTF-8 bytes (ensure_ascii=False keeps it unescaped).
    raw = json.dumps(dict(doc, padding="é" * ((MAX_MESSAGE_BYTES - base) // 2 + 1)), ensure_ascii=False)
    assert len(raw) < MAX_MESSAGE_BYTES < len(raw.encode())
    refused(parse_registration, raw, "message", "bytes")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"provider_id=x", "not valid JSON"),
        (b"{'provider_id': 'x'}", "not valid JSON"),
        (b'{"provider_id": "x",}', "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"provider_id": "\xc3\x28"}', "UTF-8"),
        (b'{"provider_id": "\xed\xa0\x80"}', "UTF-8"),  # an encoded surrogate
        (b"[]", "JSON object"),
        (b"[{}]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"42", "JSON object"),
        (b"null", "JSON object"),
        (b"true", "JSON object"),
    ],
)
@pytest.mark.parametrize("parse", [parse_registration, parse_heartbeat, parse_capacity_update])
def test_not_a_json_object_refused(raw: bytes, fragment: str, parse: Callable[..., Any]) -> None:
    refused(parse, raw, "message", fragment)


@pytest.mark.parametrize("raw", [None, 42, {"provider_id": "x"}, ["x"]])
def test_wrong_python_type_refused(raw: Any) -> None:
    refused(parse_registration, raw, "message", "bytes or text")


def test_unknown_fields_ignored_at_every_level() -> None:
    doc = agent_doc()
    doc["future_field"] = {"nested": [1, 2, 3]}
    doc["spec"]["gpu_topology"] = "NVLink"
    doc["spec"]["gpus"][0]["mig_mode"] = None
    doc["capacity"]["spot"] = True
    request = parse_registration(dumps(doc))
    assert not hasattr(request.request, "future_field")
    assert "future_field" not in request.request.model_dump()
    heartbeat = load_protocol("heartbeat.agent.json") | {"gpu_temps": [60, 61], "disk_usage": 0.3}
    assert parse_heartbeat(dumps(heartbeat)).provider_id == AGENT_WALLET


# -- the malformed-message corpus -----------------------------------------------------------------

# Each case: (id, base example, path to replace, new value or DELETE, expected field, reason fragment).
# The base decides the parser: HB is a heartbeat, AG (the agent's) and SEED are registrations.
HB = load_protocol("heartbeat.agent.json")
AG = load_protocol("registration.agent.json")
SEED = seed_doc()
SP, CAP, G0 = "spec", "capacity", ("spec", "gpus", 0)
GE = "greater than or equal to 0"

# fmt: off
CORPUS: list[tuple[str, dict[str, Any], tuple[str | int, ...], Any, str, str]] = [
    # missing and null required fields
    ("missing provider_id", AG, ("provider_id",), DELETE, "provider_id", "required"),
    ("missing wallet", AG, ("wallet_addr",), DELETE, "wallet_addr", "required"),
    ("missing spec", AG, (SP,), DELETE, "spec", "required"),
    ("missing hostname", AG, (SP, "hostname"), DELETE, "spec.hostname", "required"),
    ("missing public_ip", AG, (SP, "public_ip"), DELETE, "spec.public_ip", "required"),
    ("missing cpu_cores", AG, (SP, "cpu_cores"), DELETE, "spec.cpu_cores", "required"),
    ("missing memory", AG, (SP, "total_memory_mb"), DELETE, "spec.total_memory_mb", "required"),
    ("missing gpu name", AG, (SP, "gpus", 1, "name"), DELETE, "spec.gpus[1].name", "required"),
    ("null provider_id", AG, ("provider_id",), None, "provider_id", "must be a string"),
    ("null spec", AG, (SP,), None, "spec", "JSON object"),
    ("null cpu_cores", AG, (SP, "cpu_cores"), None, "spec.cpu_cores", "must be an integer"),
    ("null hostname", AG, (SP, "hostname"), None, "spec.hostname", "must be a string"),
    ("hb missing provider_id", HB, ("provider_id",), DELETE, "provider_id", "required"),
    ("hb null provider_id", HB, ("provider_id",), None, "provider_id", "must be a string"),
    # wrong types: no coercion
    ("string int", AG, (SP, "cpu_cores"), "32", "spec.cpu_cores", "must be an integer"),
    ("bool int", AG, (SP, "cpu_cores"), True, "spec.cpu_cores", "must be an integer"),
    ("float int", AG, (SP, "cpu_cores"), 32.0, "spec.cpu_cores", "integer"),
    ("fractional int", AG, (SP, "total_memory_mb"), 1.5, "spec.total_memory_mb", "integer"),
    ("string total_gpus", AG, (SP, "total_gpus"), "2", "spec.total_gpus", "must be an integer"),
    ("bool gpu memory", AG, (*G0, "memory_mb"), False, "spec.gpus[0].memory_mb", "must be an integer"),
    ("string seed memory", SEED, (*G0, "memory"), "24GB", "spec.gpus[0].memory", "must be an integer"),
    ("int provider_id", AG, ("provider_id",), 7, "provider_id", "must be a string"),
    ("int hostname", AG, (SP, "hostname"), 1, "spec.hostname", "must be a string"),
    ("list public_ip", AG, (SP, "public_ip"), ["1.1.1.1"], "spec.public_ip", "must be a string"),
    ("object gpus", AG, (SP, "gpus"), {"0": {"name": "x"}}, "spec.gpus", "must be a JSON array"),
    ("string gpu entry", AG, G0, "A100", "spec.gpus[0]", "JSON object"),
    ("list capacity", AG, (CAP,), [], "capacity", "JSON object"),
    ("string price", AG, (CAP, "gpu_price_per_hour"), "0.5", "capacity.gpu_price_per_hour", "a number"),
    ("bool price", AG, (CAP, "cpu_price_per_hour"), True, "capacity.cpu_price_per_hour", "must be a number"),
    ("hb string cpu", HB, ("cpu_usage",), "7%", "cpu_usage", "must be a number"),
    ("hb bool jobs", HB, ("active_jobs",), True, "active_jobs", "must be an integer"),
    ("hb string gpu usage", HB, ("gpu_usage",), "12.5,0", "gpu_usage", "must be a JSON array"),
    ("hb bad timestamp", HB, ("timestamp",), "yesterday", "timestamp", "datetime"),
    ("bad timestamp", AG, ("timestamp",), "2026-13-45T99:00:00Z", "timestamp", "datetime"),
    # negative, non-finite, out of bounds
    ("negative cores", AG, (SP, "cpu_cores"), -1, "spec.cpu_cores", GE),
    ("too many cores", AG, (SP, "cpu_cores"), 4097, "spec.cpu_cores", "4096"),
    ("huge cores", AG, (SP, "cpu_cores"), 10**30, "spec.cpu_cores", "4096"),
    ("negative memory", AG, (SP, "total_memory_mb"), -5, "spec.total_memory_mb", GE),
    ("memory > 64 TiB", AG, (SP, "total_memory_mb"), 2**26 + 1, "spec.total_memory_mb", str(2**26)),
    ("too many gpus", AG, (SP, "total_gpus"), 65, "spec.total_gpus", "64"),
    ("negative gpus", AG, (SP, "total_gpus"), -2, "spec.total_gpus", GE),
    ("65 gpu entries", AG, (SP, "gpus"), [{"name": "NVIDIA T4"}] * 65, "spec.gpus", "at most 64"),
    ("negative gpu memory", AG, (*G0, "memory_mb"), -1, "spec.gpus[0].memory_mb", GE),
    ("negative disk", AG, (SP, "total_disk_gb"), -1, "spec.total_disk_gb", GE),
    ("disk free > total", AG, (SP, "available_disk_gb"), 1801, "spec.available_disk_gb", "exceeds total"),
    ("too many threads", AG, (SP, "cpu_threads"), 10**6, "spec.cpu_threads", "less than or equal"),
    ("negative price", AG, (CAP, "gpu_price_per_hour"), -0.01, "capacity.gpu_price_per_hour", GE),
    ("negative model price", AG, (CAP, "gpu_prices_per_hour", "NVIDIA A100-SXM4-80GB"), -1,
     "capacity.gpu_prices_per_hour.NVIDIA A100-SXM4-80GB", GE),
    ("absurd price", AG, (CAP, "cpu_price_per_hour"), 1e12, "capacity.cpu_price_per_hour", "less than or"),
    ("overflowing price", AG, (CAP, "cpu_price_per_hour"), 1e400, "capacity.cpu_price_per_hour", "finite"),
    ("negative model count", AG, (CAP, "available_gpus", "NVIDIA A100-SXM4-80GB"), -1,
     "capacity.available_gpus.NVIDIA A100-SXM4-80GB", GE),
    ("model counts > 64", AG, (CAP, "available_gpus"), {"a": 40, "b": 25}, "capacity.available_gpus", "65"),
    ("negative offered cores", AG, (CAP, "total_cpu_cores"), -1, "capacity.total_cpu_cores", GE),
    ("hb negative cpu", HB, ("cpu_usage",), -1, "cpu_usage", GE),
    ("hb negative gpu usage", HB, ("gpu_usage",), [1, -0.5], "gpu_usage[1]", GE),
    ("hb negative jobs", HB, ("active_jobs",), -1, "active_jobs", GE),
    ("hb 65 gpu usages", HB, ("gpu_usage",), [0] * 65, "gpu_usage", "at most 64"),
    # text fields
    ("empty gpu name", AG, (*G0, "name"), "", "spec.gpus[0].name", "at least 1"),
    ("blank gpu name", AG, (*G0, "name"), "   ", "spec.gpus[0].name", "printable"),
    ("control chars in gpu name", AG, (*G0, "name"), "A100\n\x1b[2J", "spec.gpus[0].name", "printable"),
    ("long gpu name", AG, (*G0, "name"), "A" * 129, "spec.gpus[0].name", "at most 128"),
    ("long os", AG, (SP, "os"), "x" * 129, "spec.os", "at most 128"),
    ("long agent_version", AG, ("agent_version",), "1" * 33, "agent_version", "at most 32"),
    ("hb long node_name", HB, ("node_name",), "n" * 254, "node_name", "at most 253"),
    ("hb bad provider_id", HB, ("provider_id",), "p q", "provider_id", "1 to 128 characters"),
    ("hostname template", AG, (SP, "hostname"), "{{ lookup('pipe','id') }}", "spec.hostname", "RFC 1123"),
    ("hostname newline", SEED, (SP, "hostname"), "gpu-server-01\n", "spec.hostname", "RFC 1123"),
    ("public ip zone", SEED, (SP, "public_ip"), "2606:4700::1%$(id)", "spec.public_ip", "zone"),
    ("gpu index >= 64", AG, (*G0, "index"), 64, "spec.gpus[0].index", "less than 64"),
]
# fmt: on


@pytest.mark.parametrize(
    ("base", "path", "value", "field", "fragment"),
    [case[1:] for case in CORPUS],
    ids=[case[0] for case in CORPUS],
)
def test_malformed_corpus(
    base: dict[str, Any], path: tuple[str | int, ...], value: Any, field: str, fragment: str
) -> None:
    parse = parse_heartbeat if base is HB else parse_registration
    refused(parse, dumps(with_value(base, path, value)), field, fragment)


def test_corpus_is_big_enough_and_ids_unique() -> None:
    ids = [case[0] for case in CORPUS]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)


def test_several_problems_are_counted() -> None:
    doc = with_value(AG, ("spec", "cpu_cores"), -1)
    doc["spec"]["total_memory_mb"] = -1
    error = refused_registration(doc, "spec.cpu_cores", "greater than or equal to 0")
    assert "1 more problem" in error.reason


# -- nothing but MessageError ---------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
KEYS = st.sampled_from(
    [
        "provider_id",
        "wallet_addr",
        "spec",
        "capacity",
        "hostname",
        "public_ip",
        "gpus",
        "total_gpus",
        "name",
        "memory",
        "memory_mb",
        "cpu_cores",
        "total_memory_mb",
        "gpu_usage",
        "cpu_usage",
        "active_jobs",
        "timestamp",
        "total_gpus",
        "gpu_prices_per_hour",
        "available_disk_gb",
        "total_disk_gb",
    ]
) | st.text(max_size=8)
MESSAGE_LIKE = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)
PARSERS = [parse_registration, parse_heartbeat, parse_capacity_update]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_message_errors(raw: str | bytes) -> None:
    for parse in PARSERS:
        try:
            parse(raw)
        except MessageError as error:
            assert isinstance(error.field, str) and error.field
            assert isinstance(error.reason, str) and error.reason


@FAST
@given(st.binary(max_size=512))
@example(b"\x00")
@example(b"\xef\xbb\xbf{}")  # a UTF-8 byte order mark
@example(b'{"provider_id": "\\ud800"}')  # an escaped lone surrogate
def test_arbitrary_bytes_raise_only_message_error(raw: bytes) -> None:
    only_message_errors(raw)


@FAST
@given(JSON_VALUES)
def test_arbitrary_json_values_raise_only_message_error(value: Any) -> None:
    raw = json.dumps(value)
    only_message_errors(raw)
    only_message_errors(raw.encode())


@FAST
@given(MESSAGE_LIKE)
def test_message_like_objects_raise_only_message_error(value: Any) -> None:
    only_message_errors(json.dumps(value))


def leaf_paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


AGENT_PATHS = [p for p in leaf_paths(AG) if p]
HB_PATHS = [p for p in leaf_paths(HB) if p]


@FAST
@given(st.sampled_from(AGENT_PATHS), JSON_VALUES, st.booleans())
def test_one_field_of_the_agent_example_replaced(
    path: tuple[str | int, ...], value: Any, private: bool
) -> None:
    """Near-valid messages reach deep validators: replacing any one value must never crash them."""
    raw = dumps(with_value(AG, path, value))
    try:
        request = parse_registration(raw, allow_private_ips=private)
    except MessageError:
        return
    assert isinstance(request.request, RegistrationRequest)
    assert sum(request.offered_gpus().values()) <= sum(request.hardware.values())
    assert request.totals.cpu_cores <= request.spec.cpu_cores
    assert request.totals.memory_mb <= request.spec.total_memory_mb


@FAST
@given(st.sampled_from(HB_PATHS), JSON_VALUES)
def test_one_field_of_the_heartbeat_example_replaced(path: tuple[str | int, ...], value: Any) -> None:
    with contextlib.suppress(MessageError):
        parse_heartbeat(dumps(with_value(HB, path, value)))


# -- issue 9: what the deployed Go agent and SDK really send ---------------------------------------


def test_go_agent_cpu_only_host_with_null_gpus_is_a_host_without_gpus() -> None:
    doc = load_go_agent("registration.cpu-only.json")
    assert doc["spec"]["gpus"] is None
    request = parse_registration(dumps(doc))  # before: "spec.gpus: must be a JSON array"
    assert request.spec.gpus == []
    assert request.spec.total_gpus == 0
    assert request.offered_gpus() == {}
    assert request.spec.architecture == "amd64"


@pytest.mark.parametrize(
    ("given", "normal"),
    [("amd64", "amd64"), ("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64")],
)
def test_architecture_spellings_of_go_and_the_kernel_are_one(given: str, normal: str) -> None:
    doc = with_value(agent_doc(), ("spec", "architecture"), given)
    assert parse_registration(dumps(doc)).spec.architecture == normal


def test_an_unknown_architecture_is_refused_naming_the_field() -> None:
    doc = with_value(agent_doc(), ("spec", "architecture"), "{{ lookup('pipe','id') }}")
    refused_registration(doc, "spec.architecture", "not a known CPU architecture")


def test_sdk_capacity_offers_the_shared_part_and_starts_with_its_mining_gpus() -> None:
    request = parse_registration(dumps(load_go_agent("registration.sdk.json")))
    totals = request.totals
    assert totals.cpu_cores == 24  # what it shares, not the host's 32 (total_cpu_cores)
    assert totals.memory_mb == 196608  # not the host's 257698 (total_memory_mb)
    assert totals.gpus == {"RTX-4090": 4}
    assert totals.mining == {"RTX-4090": 1}


def test_sdk_mining_follows_available_gpus_without_mining_config() -> None:
    doc = load_go_agent("registration.sdk.json")
    del doc["capacity"]["mining_config"]
    doc["capacity"]["available_gpus"] = {"NVIDIA GeForce RTX 4090": 2}
    assert parse_registration(dumps(doc)).totals.mining == {"RTX-4090": 2}
    doc["capacity"]["mining_config"] = {"enabled": False}
    assert parse_registration(dumps(doc)).totals.mining == {"RTX-4090": 0}


def test_sdk_mining_beyond_the_offer_is_refused() -> None:
    doc = load_go_agent("registration.sdk.json")
    doc["capacity"]["mining_config"]["mining_gpus"] = {"NVIDIA GeForce RTX 4090": 5}
    refused_registration(doc, "capacity.mining_config.mining_gpus", "5 RTX-4090 mining but 4 offered")
    doc = load_go_agent("registration.sdk.json")
    del doc["capacity"]["mining_config"]
    doc["capacity"]["available_gpus"] = {"NVIDIA GeForce RTX 4090": 9}
    refused_registration(doc, "capacity.available_gpus", "9 RTX-4090 available but 4 offered")


@pytest.mark.parametrize("name", ["NVIDIA GeForce", "***", "Tesla"])
def test_a_gpu_whose_name_yields_no_model_is_refused_naming_it(name: str) -> None:
    doc = with_value(agent_doc(), ("spec", "gpus", 1, "name"), name)
    error = refused_registration(doc, "spec.gpus[1].name", "names no GPU model")
    assert name in error.reason
    doc = with_value(agent_doc(), ("capacity", "gpu_prices_per_hour"), {name: 1.0})
    refused_registration(doc, "capacity.gpu_prices_per_hour", "names no GPU model")


def test_gpu_names_in_any_case_are_one_model() -> None:
    doc = with_value(agent_doc(), ("spec", "gpus", 1, "name"), "nvidia a100-sxm4-80gb")
    request = parse_registration(dumps(doc))
    assert request.hardware == {"A100-SXM4-80GB": 2}

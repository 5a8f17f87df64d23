"""Names that leave the system: canonical GPU models, label values, node names, inventory groups."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worldland.names import (
    LABEL_VALUE_MAX,
    MAX_NODE_NAME_ATTEMPT,
    UNKNOWN_GPU_MODEL,
    canonical_gpu_model,
    gpu_model_group,
    is_label_value,
    label_value,
    node_name,
)

RFC1123_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
ANSIBLE_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FAST = settings(max_examples=200, deadline=None)

# Text as hostile providers send it: any unicode, plus the characters that matter most here.
HOSTILE_TEXT = st.text(max_size=120) | st.text(
    alphabet=st.sampled_from(list("NVIDIAGeForce RTX-_.4090 \t\n{}$`;|&'\"/\\%é\u200b\x00")), max_size=120
)


def valid_label_value(value: str) -> bool:
    return len(value) <= LABEL_VALUE_MAX and LABEL_VALUE.fullmatch(value) is not None


# -- canonical_gpu_model --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB-HBM3"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("Tesla V100-SXM2-16GB", "V100-SXM2-16GB"),
        ("Quadro RTX 8000", "RTX-8000"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX-3090-Ti"),
        ("NVIDIA L40S", "L40S"),
        ("Tesla T4", "T4"),
        ("NVIDIA Tesla V100-PCIE-32GB", "V100-PCIE-32GB"),
        ("nvidia geforce rtx 4090", "rtx-4090"),  # the vendor's own case is kept, vendor words any case
        ("  NVIDIA\tGeForce   RTX  4090 \n", "RTX-4090"),
        ("NVIDIA, GeForce RTX 4090", "RTX-4090"),
        ("RTX-4090", "RTX-4090"),
        ("NVIDIA H100 PCIe (80GB)", "H100-PCIe-80GB"),
        ("NVIDIA", UNKNOWN_GPU_MODEL),
        ("NVIDIA-", UNKNOWN_GPU_MODEL),
        ("", UNKNOWN_GPU_MODEL),
        ("   ", UNKNOWN_GPU_MODEL),
        ("---", UNKNOWN_GPU_MODEL),
        ("{{ lookup('pipe','id') }}", "lookup-pipe-id"),
    ],
)
def test_canonical_gpu_model(name: str, canonical: str) -> None:
    assert canonical_gpu_model(name) == canonical


def test_canonical_long_names_are_shortened_with_a_hash() -> None:
    first = canonical_gpu_model("NVIDIA " + "Very Long Model Name " * 5 + "A")
    second = canonical_gpu_model("NVIDIA " + "Very Long Model Name " * 5 + "B")
    assert len(first) <= LABEL_VALUE_MAX and len(second) <= LABEL_VALUE_MAX
    assert first != second
    assert first.startswith("Very-Long-Model-Name-")
    assert is_label_value(first) and is_label_value(second)


@FAST
@given(HOSTILE_TEXT)
@example("NVIDIA-")
@example("GeForce.")
@example("x" * 200)
@example("a" * 56 + "-" + "b" * 10)
def test_canonical_is_a_label_value_and_idempotent(name: str) -> None:
    canonical = canonical_gpu_model(name)
    assert is_label_value(canonical), canonical
    assert valid_label_value(canonical), canonical
    assert canonical  # never empty: an unnamed GPU is "unknown"
    assert canonical_gpu_model(canonical) == canonical


# -- label values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "a", "RTX-4090", "a.b_c-d", "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE", "x" * 63]
)
def test_is_label_value_true(value: str) -> None:
    assert is_label_value(value)


@pytest.mark.parametrize(
    "value",
    ["-a", "a-", "_a", "a.", "a b", "a/b", "x" * 64, "é", "abc\n", "\nabc", "a\x00", "{{x}}", "provider:1"],
)
def test_is_label_value_false(value: str) -> None:
    assert not is_label_value(value)


@FAST
@given(HOSTILE_TEXT)
@example("abc\n")
@example("provider:1")
@example("-" * 100)
def test_label_value_is_always_valid(text: str) -> None:
    value = label_value(text)
    assert valid_label_value(value), value
    assert label_value(value) == value


@FAST
@given(st.from_regex(LABEL_VALUE, fullmatch=True).filter(lambda v: len(v) <= LABEL_VALUE_MAX))
def test_label_value_leaves_valid_values_unchanged(value: str) -> None:
    assert label_value(value) == value


def test_label_value_keeps_different_inputs_apart() -> None:
    assert label_value("provider:1") != label_value("provider/1")
    assert label_value("a" * 70) != label_value("a" * 71)


# -- node names -----------------------------------------------------------------------------------

PROVIDER = "0x3f5CE5FBFe3E9af3971dD833D26bA9b5C936f0bE"


@pytest.mark.parametrize(
    ("hostname", "prefix"),
    [
        ("rig-07", "rig-07-"),
        ("RIG-07", "rig-07-"),
        ("gpu-server-01.example.com", "gpu-server-01-example-com-"),
        ("Rig_07", "rig-07-"),
        ("", "node-"),
        ("---", "node-"),
        ("{{ lookup('pipe','id') }}", "lookup-pipe-id-"),
    ],
)
def test_node_name_examples(hostname: str, prefix: str) -> None:
    name = node_name(hostname, PROVIDER)
    assert name.startswith(prefix)
    assert RFC1123_LABEL.fullmatch(name)
    assert len(name) == len(prefix) + 6


def test_node_name_is_stable() -> None:
    assert node_name("rig-07", PROVIDER) == node_name("rig-07", PROVIDER)


@FAST
@given(HOSTILE_TEXT, st.text(max_size=130), st.integers(min_value=0, max_value=MAX_NODE_NAME_ATTEMPT))
@example("a" * 253, "p", MAX_NODE_NAME_ATTEMPT)
@example("", "p", MAX_NODE_NAME_ATTEMPT)
def test_node_name_is_always_an_rfc1123_label(hostname: str, provider_id: str, attempt: int) -> None:
    name = node_name(hostname, provider_id, attempt)
    assert len(name) <= 63
    assert RFC1123_LABEL.fullmatch(name), name


@FAST
@given(HOSTILE_TEXT, st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_node_name_differs_for_different_providers(hostname: str, first: str, second: str) -> None:
    if first != second:
        assert node_name(hostname, first) != node_name(hostname, second)


@FAST
@given(HOSTILE_TEXT, st.text(max_size=40))
def test_node_name_attempt_lengthens_the_suffix(hostname: str, provider_id: str) -> None:
    names = [node_name(hostname, provider_id, attempt) for attempt in range(MAX_NODE_NAME_ATTEMPT + 1)]
    suffixes = [name.rsplit("-", 1)[1] for name in names]
    assert [len(s) for s in suffixes] == [6 + 2 * attempt for attempt in range(MAX_NODE_NAME_ATTEMPT + 1)]
    assert len(set(names)) == len(names)
    for shorter, longer in itertools.pairwise(suffixes):
        assert longer.startswith(shorter)


@pytest.mark.parametrize("attempt", [-1, MAX_NODE_NAME_ATTEMPT + 1, 1000])
def test_node_name_attempt_out_of_range(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        node_name("rig-07", PROVIDER, attempt)


# -- inventory groups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "group"),
    [
        ("RTX-4090", "gpu_RTX_4090"),
        ("H100-80GB-HBM3", "gpu_H100_80GB_HBM3"),
        ("A100.SXM4", "gpu_A100_SXM4"),
        (UNKNOWN_GPU_MODEL, "gpu_unknown"),
    ],
)
def test_gpu_model_group_examples(model: str, group: str) -> None:
    assert gpu_model_group(model) == group


@FAST
@given(HOSTILE_TEXT)
def test_gpu_model_group_is_a_valid_ansible_group_name(name: str) -> None:
    assert ANSIBLE_GROUP.fullmatch(gpu_model_group(canonical_gpu_model(name)))
    assert ANSIBLE_GROUP.fullmatch(gpu_model_group(name))

"""Names that leave the system: canonical GPU models, label values, node names, inventory groups."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worldland.domain.names import (
    LABEL_VALUE_MAX,
    MAX_NODE_NAME_ATTEMPT,
    UnknownGpuModel,
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


# Names as nvidia-smi prints them (``--query-gpu=name``); each keeps NVIDIA's spelling, less the brand.
NVIDIA_SMI_NAMES = {
    "NVIDIA GeForce RTX 4090": "RTX-4090",
    "NVIDIA H100 80GB HBM3": "H100-80GB-HBM3",
    "NVIDIA A100-SXM4-80GB": "A100-SXM4-80GB",
    "NVIDIA RTX A6000": "RTX-A6000",
    "NVIDIA GeForce RTX 3060 Ti": "RTX-3060-Ti",
    "NVIDIA GeForce RTX 3090 Ti": "RTX-3090-Ti",
    "NVIDIA GeForce RTX 4070 SUPER": "RTX-4070-SUPER",
    "NVIDIA GeForce RTX 4070 Ti SUPER": "RTX-4070-Ti-SUPER",
    "NVIDIA GeForce RTX 4090 D": "RTX-4090-D",
    "NVIDIA GeForce RTX 3080 Laptop GPU": "RTX-3080-Laptop-GPU",
    "NVIDIA GeForce RTX 2080 with Max-Q Design": "RTX-2080-with-Max-Q-Design",
    "NVIDIA GeForce GTX 1080 Ti": "GTX-1080-Ti",
    "NVIDIA H100 PCIe": "H100-PCIe",
    "NVIDIA H100 NVL": "H100-NVL",
    "NVIDIA H200": "H200",
    "NVIDIA GH200 480GB": "GH200-480GB",
    "NVIDIA A100 80GB PCIe": "A100-80GB-PCIe",
    "NVIDIA A100-SXM4-40GB MIG 1g.5gb": "A100-SXM4-40GB-MIG-1g.5gb",
    "NVIDIA H100 80GB HBM3 MIG 3g.40gb": "H100-80GB-HBM3-MIG-3g.40gb",
    "NVIDIA RTX 6000 Ada Generation": "RTX-6000-Ada-Generation",
    "NVIDIA RTX 4000 SFF Ada Generation": "RTX-4000-SFF-Ada-Generation",
    "NVIDIA RTX PRO 6000 Blackwell Workstation Edition": "RTX-PRO-6000-Blackwell-Workstation-Edition",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA A10G": "A10G",
    "NVIDIA TITAN Xp": "TITAN-Xp",
    "NVIDIA TITAN RTX": "TITAN-RTX",
    "NVIDIA CMP 170HX": "CMP-170HX",
    "Tesla V100-SXM2-16GB": "V100-SXM2-16GB",
    "Tesla T4": "T4",
    "Quadro RTX 8000": "RTX-8000",
}


@pytest.mark.parametrize(("name", "canonical"), NVIDIA_SMI_NAMES.items())
def test_canonical_keeps_nvidias_spelling(name: str, canonical: str) -> None:
    assert canonical_gpu_model(name) == canonical


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("rtx 4090", "RTX-4090"),
        ("Rtx 4090", "RTX-4090"),
        ("RTX 4090", "RTX-4090"),
        ("rtx-4090", "RTX-4090"),  # what the old rule stored for "nvidia geforce rtx 4090"
        ("nvidia geforce rtx 4090", "RTX-4090"),
        ("NVIDIA GEFORCE RTX 3060 TI", "RTX-3060-Ti"),
        ("nvidia h100 pcie", "H100-PCIe"),
        ("Tesla V100-PCIE-32GB", "V100-PCIe-32GB"),  # nvidia-smi writes PCIE and PCIe: one spelling
        ("NVIDIA Tesla V100-PCIE-32GB", "V100-PCIe-32GB"),
        ("NVIDIA A100-SXM4-40GB MIG 1G.5GB", "A100-SXM4-40GB-MIG-1g.5gb"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me", "H100-80GB-HBM3-MIG-1g.10gb-me"),
        ("nvidia rtx 6000 ada generation", "RTX-6000-Ada-Generation"),
        ("geforce rtx 2080 WITH max-q DESIGN", "RTX-2080-with-Max-Q-Design"),
        ("  NVIDIA\tGeForce   RTX  4090 \n", "RTX-4090"),
        ("NVIDIA, GeForce RTX 4090", "RTX-4090"),
        ("NVIDIA-GeForce-RTX-4090", "RTX-4090"),
        ("RTX-4090", "RTX-4090"),
        ("NVIDIA H100 PCIe (80GB)", "H100-PCIe-80GB"),
        ("{{ lookup('pipe','id') }}", "LOOKUP-PIPE-ID"),
    ],
)
def test_canonical_gpu_model(name: str, canonical: str) -> None:
    assert canonical_gpu_model(name) == canonical


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("NVIDIA GeForce", "(only vendor or brand words)"),
        ("NVIDIA", "(only vendor or brand words)"),
        ("nvidia-", "(only vendor or brand words)"),
        ("Tesla, Quadro.", "(only vendor or brand words)"),
        ("***", ""),
        ("   ", ""),
        ("", ""),
        ("---", ""),
        ("._.", ""),
        ("é\u200b", ""),
    ],
)
def test_a_name_without_a_model_is_refused(name: str, why: str) -> None:
    with pytest.raises(UnknownGpuModel) as refused:
        canonical_gpu_model(name)
    assert str(refused.value) == f"{json.dumps(name)} names no GPU model {why}".rstrip()
    assert refused.value.name == name
    assert isinstance(refused.value, ValueError)


def test_the_refusal_shows_a_long_name_cut_down() -> None:
    with pytest.raises(UnknownGpuModel, match=r'^"(NVIDIA ){11}NVI\.\.\." names no GPU model'):
        canonical_gpu_model("NVIDIA " * 40)


def test_canonical_long_names_are_shortened_with_a_hash() -> None:
    first = canonical_gpu_model("NVIDIA " + "Very Long Model Name " * 5 + "A")
    second = canonical_gpu_model("NVIDIA " + "Very Long Model Name " * 5 + "B")
    assert len(first) <= LABEL_VALUE_MAX and len(second) <= LABEL_VALUE_MAX
    assert first != second
    assert first.startswith("VERY-LONG-MODEL-NAME-")
    assert is_label_value(first) and is_label_value(second)


def test_case_variants_of_a_long_name_agree() -> None:
    name = "NVIDIA RTX 6000 Ada Generation " * 4
    canonical = canonical_gpu_model(name)
    assert canonical == canonical_gpu_model(name.upper()) == canonical_gpu_model(name.lower())
    assert re.fullmatch(r"RTX-6000-Ada-Generation-RTX-6000-Ada-Generation-RTX-6000-[0-9A-F]{6}", canonical)
    assert len(canonical) <= LABEL_VALUE_MAX  # cut at a word, then "-" and 6 hex digits


# Realistic GPU names in any case: a real name with some letters' case flipped, or a made-up one from
# the words real names are made of, with or without brand words and in nvidia-smi's punctuation.
_REAL_WORDS = [
    "RTX", "GTX", "H100", "A100", "L40S", "4090", "3060", "80GB", "HBM3", "SXM4", "PCIe", "Ti", "SUPER",
    "D", "Ada", "Generation", "Laptop", "GPU", "with", "Max-Q", "Design", "TITAN", "Xp", "MIG", "1g.5gb",
    "3g.40gb+me", "NVL", "A6000", "CMP", "170HX",
]  # fmt: skip
_WORDS = st.sampled_from(_REAL_WORDS)
_MADE_UP = st.builds(
    lambda brand, words, seps: brand + "".join(w + s for w, s in zip(words, seps, strict=False)).strip(" -"),
    st.sampled_from(["", "NVIDIA ", "NVIDIA GeForce ", "Tesla ", "Quadro ", "nvidia, "]),
    st.lists(_WORDS, min_size=1, max_size=8),
    st.lists(st.sampled_from([" ", "-", "  ", " (", ") "]), min_size=8, max_size=8),
)


@st.composite
def _any_case(draw: st.DrawFn, names: st.SearchStrategy[str]) -> str:
    name = draw(names)
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips, strict=True))


REALISTIC_NAMES = _any_case(st.sampled_from(sorted(NVIDIA_SMI_NAMES)) | _MADE_UP)


@FAST
@given(REALISTIC_NAMES)
@example("nvidia geforce rtx 4090")
@example("NVIDIA A100-SXM4-40GB MIG 1g.5gb")
@example("NVIDIA RTX 6000 Ada Generation " * 4)
def test_case_variants_give_one_canonical_name(name: str) -> None:
    canonical = canonical_gpu_model(name)
    assert canonical_gpu_model(name.upper()) == canonical_gpu_model(name.lower()) == canonical
    assert canonical_gpu_model(name.swapcase()) == canonical
    assert canonical_gpu_model(canonical.lower()) == canonical


@FAST
@given(st.sampled_from(sorted(NVIDIA_SMI_NAMES)).flatmap(lambda n: _any_case(st.just(n))))
def test_real_names_in_any_case_get_nvidias_spelling(name: str) -> None:
    real = next(n for n in NVIDIA_SMI_NAMES if n.lower() == name.lower())
    assert canonical_gpu_model(name) == NVIDIA_SMI_NAMES[real]


@FAST
@given(HOSTILE_TEXT | REALISTIC_NAMES)
@example("NVIDIA-")
@example("GeForce.")
@example("x" * 200)
@example("a" * 56 + "-" + "b" * 10)
@example("ti" + "." * 60 + "x")
@example("1g.5gb" + "." * 60 + "x")
def test_canonical_is_a_label_value_and_idempotent(name: str) -> None:
    try:
        canonical = canonical_gpu_model(name)
    except UnknownGpuModel as refused:
        assert json.dumps(name[:80])[:-1] in str(refused)  # the message names the input
        return
    assert is_label_value(canonical), canonical
    assert valid_label_value(canonical), canonical
    assert canonical  # never empty: a name without a model is refused
    assert canonical_gpu_model(canonical) == canonical


def test_policy_refuses_an_allowed_model_that_names_none() -> None:
    from pydantic import ValidationError

    from worldland.domain.policy import ApprovalPolicy

    assert ApprovalPolicy(allowed_gpu_models=["rtx 4090", "NVIDIA GeForce RTX 4090"]).allowed_gpu_models == [
        "RTX-4090"
    ]
    with pytest.raises(ValidationError, match='"NVIDIA GeForce" names no GPU model'):
        ApprovalPolicy(allowed_gpu_models=["RTX 4090", "NVIDIA GeForce"])


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
        ("A100-SXM4-40GB-MIG-1g.5gb", "gpu_A100_SXM4_40GB_MIG_1g_5gb"),
    ],
)
def test_gpu_model_group_examples(model: str, group: str) -> None:
    assert gpu_model_group(model) == group


@FAST
@given(HOSTILE_TEXT)
def test_gpu_model_group_is_a_valid_ansible_group_name(name: str) -> None:
    assert ANSIBLE_GROUP.fullmatch(gpu_model_group(name))
    try:
        model = canonical_gpu_model(name)
    except UnknownGpuModel:
        return
    assert ANSIBLE_GROUP.fullmatch(gpu_model_group(model))

"""The agent's parts without Redis: settings, the safe join, install, backoff."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from worldland.agent.config import SettingsError, load_settings
from worldland.agent.install import UNIT_NAME, apply, plan
from worldland.agent.join import join
from worldland.agent.runner import Backoff
from worldland.protocol.messages import RegistrationResponse
from worldland.protocol.status import Status

WALLET = "0x71C7656EC7ab88b098defB751B7401B5f6d8976F"
TOKEN = "abcdef.0123456789abcdef"
CA = "sha256:" + "ab" * 32


def approved(**fields: object) -> RegistrationResponse:
    values: dict[str, object] = {
        "success": True, "status": Status.APPROVED, "message": "ok", "join_token": TOKEN,
        "master_ip": "203.0.113.10", "master_port": 6443, "ca_hash": CA, "node_name": "rig-07-1a2b3c",
    }  # fmt: skip
    values.update(fields)
    return RegistrationResponse.model_validate(values)


# -- settings ---------------------------------------------------------------------------------------


def test_settings_flag_beats_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "provider.yml"
    config.write_text(f"wallet_addr: '{WALLET}'\nheartbeat_interval: 10\nredis_url: redis://file:6379/0\n")
    monkeypatch.setenv("WORLDLAND_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("WORLDLAND_HEARTBEAT_INTERVAL", "20")
    settings = load_settings(config, {"heartbeat_interval": 5.0})
    assert settings.redis_url == "redis://env:6379/0"
    assert settings.heartbeat_interval == 5.0


def test_the_generated_provider_id_is_kept(tmp_path: Path):
    config = tmp_path / "etc" / "provider.yml"
    first = load_settings(config, {}, must_exist=False).provider_id
    assert load_settings(config, {}, must_exist=False).provider_id == first
    assert stat.S_IMODE((tmp_path / "etc" / "provider-id").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("wallet_addr: '0x1234...abcd'\n", "wallet_addr"),
        ("heartbeat_interval: 0\n", "heartbeat_interval"),
        ("redis_url: http://x\n", "redis_url"),
        ("gpu_prices_per_hour: {'NVIDIA GeForce': 1}\n", "gpu_prices_per_hour"),
        ("provider_id: '../etc'\n", "provider_id"),
        ("colour: blue\n", "colour"),
        ("- a list\n", "config"),
    ],
)
def test_a_bad_setting_names_itself(tmp_path: Path, text: str, field: str):
    config = tmp_path / "provider.yml"
    config.write_text(f"provider_id: p-1\n{text}" if not text.startswith("-") else text)
    with pytest.raises(SettingsError) as caught:
        load_settings(config, {})
    assert str(caught.value).startswith(f"{field}:")


def test_prices_are_canonical_in_any_spelling(tmp_path: Path):
    config = tmp_path / "provider.yml"
    config.write_text("provider_id: p-1\ngpu_prices_per_hour: {'nvidia geforce rtx 4090': 0.4}\n")
    assert load_settings(config, {}).gpu_prices_per_hour == {"RTX-4090": 0.4}


# -- join -------------------------------------------------------------------------------------------


def test_join_runs_kubeadm_with_separate_arguments(tmp_path: Path):
    seen: list[list[str]] = []

    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert "shell" not in kwargs
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    result = join(approved(), run=run, kubelet_conf=tmp_path / "kubelet.conf")
    assert result.joined and TOKEN not in result.summary
    assert seen == [[
        "kubeadm", "join", "203.0.113.10:6443", "--token", TOKEN,
        "--discovery-token-ca-cert-hash", CA, "--node-name", "rig-07-1a2b3c",
    ]]  # fmt: skip
    assert "--discovery-token-unsafe-skip-ca-verification" not in seen[0]


def test_join_is_skipped_on_a_joined_machine(tmp_path: Path):
    (tmp_path / "kubelet.conf").write_text("")
    result = join(approved(), run=lambda *a, **k: pytest.fail("ran"), kubelet_conf=tmp_path / "kubelet.conf")
    assert result.skipped


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("master_ip", "203.0.113.10; rm -rf /"),
        ("master_port", 0),
        ("join_token", "abcdef.0123456789abcdef --ignore-preflight-errors=all"),
        ("ca_hash", None),
        ("node_name", "Rig_07"),
    ],
)
def test_join_refuses_an_answer_field_out_of_form_before_running_anything(tmp_path: Path, field: str, value):
    with pytest.raises(ValueError, match=field):
        join(approved(**{field: value}), run=lambda *a, **k: pytest.fail("ran"), kubelet_conf=tmp_path / "k")


def test_a_failed_join_never_shows_the_token(tmp_path: Path):
    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 1, "", f"error: token {TOKEN} is invalid\n")

    result = join(approved(), run=run, kubelet_conf=tmp_path / "kubelet.conf")
    assert not result.joined and TOKEN not in result.summary and "<token>" in result.summary


# -- install ----------------------------------------------------------------------------------------


def test_install_writes_modes_is_idempotent_and_dry_run_writes_nothing(tmp_path: Path):
    calls: list[list[str]] = []

    def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    config = tmp_path / "etc" / "worldland" / "provider.yml"
    files = plan(config, {"provider_id": "p-1", "wallet_addr": WALLET}, "/opt/w/bin/worldland-provider",
                 tmp_path / "state", tmp_path / "units")  # fmt: skip
    assert apply(files, dry_run=True, run=run) == [f.path for f in files]
    assert not config.exists() and calls == []
    assert apply(files, dry_run=False, run=run) == [f.path for f in files]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    unit = (tmp_path / "units" / UNIT_NAME).read_text()
    assert "ExecStart=/opt/w/bin/worldland-provider --config" in unit and "Restart=on-failure" in unit
    assert calls[-2:] == [["systemctl", "enable", UNIT_NAME], ["systemctl", "restart", UNIT_NAME]]
    calls.clear()
    assert apply(files, dry_run=False, run=run) == []  # nothing differs: nothing written, nothing run
    assert calls == []
    os.chmod(config, 0o644)
    assert apply(files, dry_run=False, run=run) == [config]  # a widened mode is put back
    os.chmod(config.parent, 0o755)  # noqa: S103 - widened on purpose: install must narrow it again
    assert apply(files, dry_run=False, run=run) == [config]  # and a widened directory
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700


def test_backoff_is_capped_and_jittered():
    backoff = Backoff(start=1, cap=30)
    delays = [backoff.next() for _ in range(20)]
    assert all(0.5 <= d <= 30 for d in delays)
    assert len({round(d, 3) for d in delays}) > 10

"""The kube lab's one change to this machine's kernel settings: ``fs.inotify.max_user_instances`` raised for
the kubelets of the kube labs registered, and the machine's own value put back when none is left. Run
against a registry and a limit file of the test's own (nothing of this machine is read or written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab import lab


@pytest.fixture
def limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    registry = tmp_path / "registry"
    registry.mkdir()
    path = tmp_path / "max_user_instances"
    path.write_text("128\n")
    monkeypatch.setattr(lab, "REGISTRY", registry)
    monkeypatch.setattr(lab, "INOTIFY_LIMIT", path)
    return path


def register(slot: int, kube_hosts: int) -> None:
    (lab.REGISTRY / f"slot-{slot}.json").write_text(json.dumps({"slot": slot, "kube_hosts": kube_hosts}))


def test_the_limit_follows_the_kube_hosts_and_the_machines_value_comes_back(limit: Path) -> None:
    per = lab.INOTIFY_PER_KUBE_HOST
    register(1, 20)
    assert lab.fit_inotify_limit() == lab.INOTIFY_MACHINE_SHARE + 20 * per
    assert int(limit.read_text()) == 128 + 20 * per
    register(2, 3)  # a second lab: raised again, the machine's value still the one saved first
    assert lab.fit_inotify_limit() == 128 + 23 * per
    (lab.REGISTRY / "slot-1.json").unlink()
    assert lab.fit_inotify_limit() is None  # 3 hosts left: never lowered while a kube lab runs
    assert int(limit.read_text()) == 128 + 23 * per
    (lab.REGISTRY / "slot-2.json").unlink()
    assert lab.fit_inotify_limit() == 128 and limit.read_text() == "128\n"
    assert not (lab.REGISTRY / lab.INOTIFY_SAVED).exists()
    assert lab.fit_inotify_limit() is None  # nothing saved, nothing to put back


def test_a_machine_whose_limit_suffices_is_left_alone(limit: Path) -> None:
    limit.write_text("8192\n")
    register(1, 20)
    register(2, 0)  # a lab without kube hosts counts for nothing
    assert lab.fit_inotify_limit() is None and limit.read_text() == "8192\n"
    for slot in (1, 2):
        (lab.REGISTRY / f"slot-{slot}.json").unlink()
    assert lab.fit_inotify_limit() is None and limit.read_text() == "8192\n"

"""``worldland-provider join``: ``kubeadm join`` from an approved answer's structured fields, each checked
against its exact form, as separate arguments: never ``join_command`` through a shell, never without
the CA hash. A machine that already has ``/etc/kubernetes/kubelet.conf`` has joined: skipped."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worldland.domain.join import JoinValues, checked_join_values
from worldland.protocol.messages import RegistrationResponse

KUBELET_CONF = Path("/etc/kubernetes/kubelet.conf")
JOIN_TIMEOUT_S = 600
Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True, slots=True)
class JoinResult:
    joined: bool
    skipped: bool
    summary: str  # one line, never the token


def join_values(answer: RegistrationResponse) -> JoinValues:
    """The answer's join fields, checked; ``ValueError`` naming the field otherwise."""
    return checked_join_values(
        answer.master_ip, answer.master_port, answer.join_token, answer.ca_hash, answer.node_name
    )


def join(
    answer: RegistrationResponse,
    *,
    run: Run = subprocess.run,
    kubelet_conf: Path = KUBELET_CONF,
    timeout_s: float = JOIN_TIMEOUT_S,
) -> JoinResult:
    values = join_values(answer)  # before anything runs
    if kubelet_conf.exists():
        return JoinResult(False, True, f"skipped: {kubelet_conf} exists (this machine has joined)")
    try:
        result = run(values.kubeadm_args(), capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        return JoinResult(False, False, "kubeadm is not installed")
    except subprocess.TimeoutExpired:
        return JoinResult(False, False, f"kubeadm join did not finish in {timeout_s:.0f} s")
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        detail = last[0].replace(values.token, "<token>")[:200]
        return JoinResult(False, False, f"kubeadm join failed (exit {result.returncode}): {detail}")
    return JoinResult(True, False, f"joined {values.endpoint} as {values.node_name or 'this host'}")

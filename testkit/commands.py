"""The commands installed beside the running interpreter (the project's virtualenv), run as an
operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
WORLDLAND = BIN / "worldland"
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
REPO = Path(__file__).resolve().parent.parent


def worldland_env(
    *, redis_url: str | None = None, key_prefix: str | None = None, kubeconfig: Path | None = None
) -> dict[str, str]:
    """This process's environment with the repo's ansible.cfg and the control plane's settings as the
    collection's plugins read them."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    for name, value in (
        ("WORLDLAND_REDIS_URL", redis_url),
        ("WORLDLAND_KEY_PREFIX", key_prefix),
        ("WORLDLAND_KUBECONFIG", kubeconfig),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def run_local_play(
    workdir: Path,
    playbook: str,
    extra_vars: Mapping[str, Any],
    env: Mapping[str, str],
    *options: str,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``playbook`` (its text) run by ``ansible-playbook`` on localhost with a local connection, with
    ``extra_vars`` and ``out``, the file the play writes its result to; returns the process and that
    result (JSON), or None when the play wrote none."""
    play = workdir / "play.yml"
    play.write_text(playbook)
    out = workdir / "result.json"
    out.unlink(missing_ok=True)
    extra = json.dumps({**extra_vars, "out": str(out)})
    argv = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(play), "-e", extra, *options]
    run = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(env), check=False
    )
    return run, (json.loads(out.read_text()) if out.exists() else None)

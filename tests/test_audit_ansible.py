"""The audit's Ansible side, run for real: ``playbooks/heartbeat_audit.yml`` (changed from the JSON
report, check mode as a dry run) and ``playbooks/install_audit_cron.yml`` with the ``audit_cron`` role
(check mode with diff, apply, idempotence, the installed entry run as cron runs it, removal).

This machine has no cron: ``crontab`` is a stand-in (below) keeping each user's crontab in a temporary
directory, so no test ever touches a real crontab. The ``ansible.builtin.cron`` module is the real one.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import subprocess
import time
from pathlib import Path

from testkit.commands import WORLDLAND
from testkit.fleet import beat, provider, status
from worldland.domain.lifecycle import Status
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
CRONTAB_STANDIN = """#!/bin/sh
# A stand-in for crontab(1): each user's crontab is a file in $CRONTAB_STANDIN_DIR (this machine
# has no cron, and a test must never leave an entry in a real crontab).
dir="${CRONTAB_STANDIN_DIR:?}"
user=$(id -un)
if [ "$1" = "-u" ]; then user="$2"; shift 2; fi
case "$1" in
  -l) if [ -f "$dir/$user" ]; then cat "$dir/$user"; else echo "no crontab for $user" >&2; exit 1; fi ;;
  -r) rm -f "$dir/$user" ;;
  *) cat "$1" > "$dir/$user" ;;
esac
"""


def ansible_playbook(playbook: str, extra: dict, *args: str, env: dict | None = None):
    variables = json.dumps({"worldland_control_hosts": "localhost", **extra})
    binary = str(WORLDLAND.parent / "ansible-playbook")
    result = subprocess.run(
        [binary, "-i", "localhost,", "-c", "local", playbook, *args, "-e", variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_INVENTORY_ENABLED": "host_list",
            **(env or {}),
        },
        check=False,
    )
    recap = [line for line in result.stdout.splitlines() if line.startswith("localhost ")]
    return result, recap[-1] if recap else ""


def stale_fleet(redis_url: str, keys: Keys, count: int = 2) -> tuple[Fleet, list[str]]:
    """Providers approved an hour ago whose last beat is 200 s old (real time: for subprocesses)."""
    fleet = Fleet.open(connect(redis_url), keys, clock=lambda: time.time() - 3600)
    ids = [provider(fleet, Status.AVAILABLE) for _ in range(count)]
    for pid in ids:
        beat(fleet, pid, at=time.time() - 200)
    healthy = provider(fleet, Status.AVAILABLE)
    for _ in range(count):
        beat(fleet, healthy, at=time.time())
    return fleet, ids


def test_heartbeat_audit_playbook_reports_changed_from_the_json_and_check_mode_is_a_dry_run(redis_url, keys):
    fleet, ids = stale_fleet(redis_url, keys, count=1)
    extra = {
        "worldland_audit_bin": str(WORLDLAND),
        "worldland_audit_redis_url": redis_url,
        "worldland_audit_key_prefix": keys.prefix,
    }
    checked, recap = ansible_playbook("playbooks/heartbeat_audit.yml", extra, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "changed=1" in recap and status(fleet, ids[0]) is Status.AVAILABLE  # would change: nothing done
    assert '"dry_run": true' in checked.stdout
    applied, recap = ansible_playbook("playbooks/heartbeat_audit.yml", extra)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "changed=1" in recap and status(fleet, ids[0]) is Status.OFFLINE
    again, recap = ansible_playbook("playbooks/heartbeat_audit.yml", extra)
    assert again.returncode == 0 and "changed=0" in recap, again.stdout


def test_audit_cron_role_installs_a_working_flock_guarded_entry_and_removes_it(redis_url, keys, tmp_path):
    bin_dir, tabs = tmp_path / "bin", tmp_path / "crontabs"
    bin_dir.mkdir()
    tabs.mkdir()
    (bin_dir / "crontab").write_text(CRONTAB_STANDIN)
    (bin_dir / "crontab").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CRONTAB_STANDIN_DIR": str(tabs)}
    user = getpass.getuser()
    log_file, lock_file = tmp_path / "log" / "audit.log", tmp_path / "lock" / "audit.lock"
    extra = {
        "audit_cron_user": user,
        "audit_cron_worldland_bin": str(WORLDLAND),
        "audit_cron_redis_url": redis_url,
        "audit_cron_key_prefix": keys.prefix,
        "audit_cron_log_file": str(log_file),
        "audit_cron_lock_file": str(lock_file),
    }
    crontab = tabs / user

    checked, recap = ansible_playbook("playbooks/install_audit_cron.yml", extra, "--check", "--diff", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "+#Ansible: worldland heartbeat audit" in checked.stdout and "changed=3" in recap
    assert not crontab.exists() and not log_file.parent.exists()  # check mode changed nothing

    applied, recap = ansible_playbook("playbooks/install_audit_cron.yml", extra, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = crontab.read_text().splitlines()
    assert lines[0] == f'WORLDLAND_REDIS_URL="{redis_url}"'
    assert lines[1] == "#Ansible: worldland heartbeat audit"
    schedule, job = lines[2][: len("* * * * *")], lines[2][len("* * * * * ") :]
    assert schedule == "* * * * *"  # every minute
    assert job.startswith(f"/usr/bin/flock -n -E 0 {lock_file} {WORLDLAND} --key-prefix {keys.prefix} audit")
    again, recap = ansible_playbook("playbooks/install_audit_cron.yml", extra, env=env)
    assert "changed=0" in recap, again.stdout  # idempotent

    # Run the entry as cron would: /bin/sh -c with the crontab's environment.
    fleet, ids = stale_fleet(redis_url, keys)
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WORLDLAND_REDIS_URL": redis_url}
    ran = subprocess.run(["/bin/sh", "-c", job], env=cron_env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout == "", ran  # no output: nothing for cron to mail
    assert all(status(fleet, pid) is Status.OFFLINE for pid in ids)
    assert "audit: checked" in log_file.read_text() and "newly offline 2" in log_file.read_text()
    # While a run holds the flock, the next one exits at once, successfully and silently.
    with open(lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        skipped = subprocess.run(
            ["/bin/sh", "-c", job], env=cron_env, capture_output=True, text=True, timeout=60
        )
        assert skipped.returncode == 0 and skipped.stdout == "" and time.monotonic() - start < 5
    # A failing pass prints one line, which cron mails.
    failing = {**cron_env, "WORLDLAND_REDIS_URL": "redis://127.0.0.1:1/0"}
    failed = subprocess.run(["/bin/sh", "-c", job], env=failing, capture_output=True, text=True, timeout=60)
    assert failed.stdout.startswith("worldland audit failed (exit status 1); see ")
    assert "cannot reach Redis" in log_file.read_text()

    removed, recap = ansible_playbook(
        "playbooks/install_audit_cron.yml", {**extra, "audit_cron_state": "absent"}, env=env
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert crontab.read_text().strip() == ""

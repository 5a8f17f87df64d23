"""The audit's Ansible side, run for real: ``playbooks/heartbeat_audit.yml`` (changed from the JSON
report, check mode as a dry run) and ``playbooks/install_audit_cron.yml`` with the ``audit_cron`` role
against a lab host with Debian's real ``cron`` package (check mode with diff, apply, idempotence, the
real cron daemon running the entry on schedule, the entry run as cron runs it, removal).

cron is never installed on this machine: its ``.deb`` files are fetched once into the cache
(``tests/lab/aptrepo.py``, ``<cache>/debs``) and installed with ``dpkg`` in a kube-mode lab host, whose
``/usr``, ``/etc``, ``/var`` (the spool) and ``/run`` are private. The daemon runs in that host only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testkit.commands import WORLDLAND
from testkit.fleet import beat, provider, status
from testkit.redis_server import RedisServer
from tests.lab import aptrepo
from tests.lab.lab import LabHost
from worldland.domain.lifecycle import Status
from worldland.state.connection import connect
from worldland.state.fleet import Fleet
from worldland.state.keys import Keys

REPO = Path(__file__).resolve().parent.parent
CRON_USER = "worldland"  # the role's default user, created in the lab host
CRON_HOME = "/var/lib/worldland"  # its home: the role's lock directory
LOG_FILE = "/var/log/worldland/audit.log"  # the role's default
# Not the default: a % that cron would turn into a newline unless the role escapes it (flock would then
# run no audit, and the real cron's run below would log nothing).
LOCK_FILE = "/var/lib/worldland/audit%1.lock"
MAIL_DIR = "/var/spool/lab-mail"  # what cron mails, through the host's sendmail stand-in
# Records what cron mails (cron runs /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem USER < message).
SENDMAIL_STANDIN = f"""#!/bin/sh
# worldland lab: records each message cron mails, one file each (no MTA in the lab host)
cat > {MAIL_DIR}/mail.$$
"""
CRON_WAIT_S = 70  # cron runs the entry at the start of the next minute


def ansible_playbook(
    playbook: str, extra: dict, *args: str, inventory: Path | None = None, host: str = "localhost"
) -> tuple[subprocess.CompletedProcess, str]:
    """``ansible-playbook`` on ``host``: this machine (local connection), or one of ``inventory``'s."""
    variables = json.dumps({"worldland_control_hosts": host, **extra})
    where = ["-i", str(inventory)] if inventory else ["-i", "localhost,", "-c", "local"]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    if inventory is None:
        env["ANSIBLE_INVENTORY_ENABLED"] = "host_list"
    binary = str(WORLDLAND.parent / "ansible-playbook")
    result = subprocess.run(
        [binary, *where, playbook, *args, "-e", variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    recap = [line for line in result.stdout.splitlines() if line.startswith(f"{host} ")]
    return result, recap[-1] if recap else ""


def stale_fleet(redis_url: str, keys: Keys, count: int = 2) -> tuple[Fleet, list[str]]:
    """Providers approved an hour ago whose last beat is 200 s old (real time: for subprocesses), and a
    healthy one (its beat stays fresh for the next two minutes)."""
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


def install_cron(host: LabHost) -> None:
    """Debian's cron in the host (dpkg; policy-rc.d keeps its service from starting), the role's user,
    and a sendmail stand-in that keeps what cron mails in MAIL_DIR."""
    debs = {deb.name.split("_", 1)[0]: deb for deb in aptrepo.fetch_debian_debs(("cron",))}
    # The cache is visible in the host (its /root and /tmp show this machine's). cron pre-depends on
    # cron-daemon-common, so that one is configured first. man-db's trigger (re-indexing manual pages,
    # seconds) is left pending.
    install = [
        f"dpkg -i --no-triggers {shlex.quote(str(debs[name]))} >/dev/null" for name in debs if name != "cron"
    ]
    install.append(f"dpkg -i --no-triggers {shlex.quote(str(debs['cron']))} >/dev/null")
    host.ssh(" && ".join(install), timeout=120)
    assert host.ssh("dpkg-query -W -f='${Status}' cron").stdout == "install ok installed"
    host.ssh(
        f"useradd --system --no-create-home --home-dir {CRON_HOME} --shell /usr/sbin/nologin {CRON_USER}"
        f" && install -d -m 1777 {MAIL_DIR} && cat > /usr/sbin/sendmail && chmod 0755 /usr/sbin/sendmail",
        input=SENDMAIL_STANDIN,
    )


def run_as_cron(
    host: LabHost, job: str, redis_url: str, hold_lock: bool = False
) -> subprocess.CompletedProcess:
    """The entry's command run in the host as cron runs it: as the user, /bin/sh -c, cron's environment
    (as its mails show it) plus the crontab's WORLDLAND_REDIS_URL; ``hold_lock``: while root holds the
    flock."""
    env = ["SHELL=/bin/sh", f"HOME={CRON_HOME}", "PATH=/usr/bin:/bin", f"LOGNAME={CRON_USER}"]
    command = f"runuser -u {CRON_USER} -- env -i {shlex.join([*env, f'WORLDLAND_REDIS_URL={redis_url}'])}"
    unescaped = job.replace("\\%", "%")  # cron drops the backslash of an escaped %
    command += f" /bin/sh -c {shlex.quote(unescaped)}"
    if hold_lock:
        command = f"flock {LOCK_FILE} {command}"
    return host.ssh(command, check=False)


def check_entry_as_cron_runs_it(host: LabHost, job: str, redis_url: str) -> None:
    """While a run holds the flock, the next exits at once, successfully and silently; a failing pass
    prints one line (which cron mails) and logs why. Neither changes the fleet."""
    start = time.monotonic()
    skipped = run_as_cron(host, job, redis_url, hold_lock=True)
    assert skipped.returncode == 0 and skipped.stdout == "" and time.monotonic() - start < 5, skipped
    failed = run_as_cron(host, job, "redis://127.0.0.1:1/0")
    assert failed.stdout.startswith("worldland audit failed (exit status 1); see "), failed
    assert "cannot reach Redis" in host.ssh(f"cat {LOG_FILE}").stdout


def gone(pid: int) -> bool:
    """Exited (or a zombie waiting for this machine's init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (cron's job runners: each mails its job's output, then exits)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def spool_here() -> list[str]:
    """This machine's own crontab spool (it must not change)."""
    spool = Path("/var/spool/cron/crontabs")
    return sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []


@pytest.mark.skipif(
    shutil.which("dpkg") is None or shutil.which("apt-get") is None, reason="needs dpkg, apt-get"
)
def test_audit_cron_role_installs_an_entry_the_real_cron_runs_and_removes_it(kube_lab, keys):
    view = kube_lab(n=1)
    host = view.hosts[0]
    install_cron(host)
    # The venv's worldland is visible in the host (only /usr, /etc, /var and /run are private to it)
    # and runs as the role's user.
    version = host.ssh(f"runuser -u {CRON_USER} -- {WORLDLAND} --help", check=False)
    assert version.returncode == 0 and "Usage: worldland" in version.stdout, version
    spool_before = spool_here()

    with RedisServer(also_bind=(view.gateway,)) as redis_server:
        url = redis_server.url_at(view.gateway)  # what the host reaches
        extra = {
            "audit_cron_worldland_bin": str(WORLDLAND),
            "audit_cron_redis_url": url,
            "audit_cron_key_prefix": keys.prefix,
            "audit_cron_lock_file": LOCK_FILE,
        }  # user and log file: the role's defaults

        def playbook(*args: str, **more: str) -> tuple[subprocess.CompletedProcess, str]:
            return ansible_playbook(
                "playbooks/install_audit_cron.yml",
                {**extra, **more},
                *args,
                inventory=view.inventory,
                host=host.name,
            )

        checked, recap = playbook("--check", "--diff")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "+#Ansible: worldland heartbeat audit" in checked.stdout and "changed=3" in recap
        listed = host.ssh(f"crontab -u {CRON_USER} -l", check=False)
        assert listed.returncode == 1 and f"no crontab for {CRON_USER}" in listed.stderr  # nothing done
        # The lab gives every host an empty, root-owned /var/log/worldland; check mode left it so.
        assert host.ssh(
            "stat -c %U /var/log/worldland; test -e /var/lib/worldland || echo absent"
        ).stdout.split() == ["root", "absent"]

        applied, recap = playbook()
        assert applied.returncode == 0 and "changed=3" in recap, applied.stdout + applied.stderr
        # The real crontab wrote the real spool: the user's file, theirs, mode 0600, group crontab.
        spool_file = f"/var/spool/cron/crontabs/{CRON_USER}"
        assert host.ssh(f"stat -c '%U %G %a' {spool_file}").stdout.split() == [CRON_USER, "crontab", "600"]
        assert spool_here() == spool_before  # in the host's private /var only
        lines = host.ssh(f"crontab -u {CRON_USER} -l").stdout.splitlines()
        assert lines[:2] == [f'WORLDLAND_REDIS_URL="{url}"', "#Ansible: worldland heartbeat audit"]
        schedule, job = lines[2][: len("* * * * *")], lines[2][len("* * * * * ") :]
        assert schedule == "* * * * *" and len(lines) == 3  # every minute
        escaped_lock = LOCK_FILE.replace("%", "\\%")
        assert job.startswith(
            f"/usr/bin/flock -n -E 0 {escaped_lock} {WORLDLAND} --key-prefix {keys.prefix} audit"
        )
        assert host.ssh("stat -c '%U %a' /var/log/worldland /var/lib/worldland").stdout.split() == [
            CRON_USER, "750", CRON_USER, "750"
        ]  # fmt: skip

        # The real cron daemon, started from the package's unit by the lab's systemctl stand-in, in the
        # host's namespaces (the lab's teardown by namespace ends it too).
        fleet, ids = stale_fleet(redis_server.url, keys)
        cron_pid = 0
        try:
            host.ssh("systemctl start cron")
            started = time.monotonic()
            cron_pid = int(host.ssh("systemctl show -p MainPID --value cron").stdout)
            assert Path(f"/proc/{cron_pid}/cmdline").read_bytes().split(b"\0")[0] == b"/usr/sbin/cron"
            assert os.stat(f"/proc/{cron_pid}/ns/net").st_ino == os.stat(f"/run/netns/{host.netns}").st_ino

            again, recap = playbook()  # while cron waits for the minute
            assert again.returncode == 0 and "changed=0" in recap, again.stdout  # idempotent
            # These take the flock for seconds: in the wait if cron's minute is not near, else after.
            checked_entry = 60 - time.time() % 60 > 20
            if checked_entry:
                check_entry_as_cron_runs_it(host, job, url)

            log = ""
            while time.monotonic() - started < CRON_WAIT_S:
                log = host.ssh(f"cat {LOG_FILE} 2>/dev/null", check=False).stdout
                if "audit: checked" in log:
                    break
                time.sleep(1)
            while children(cron_pid) and time.monotonic() - started < CRON_WAIT_S + 10:
                time.sleep(0.2)  # until the job's runner has mailed what there is to mail, and exited
            diagnostics = host.ssh(
                f"systemctl status cron; cat /var/log/worldland/cron.service.log; cat {MAIL_DIR}/*",
                check=False,
            ).stdout
            assert "audit: checked 3, newly offline 2" in log, f"log: {log!r}\n{diagnostics}"
            assert all(status(fleet, pid) is Status.OFFLINE for pid in ids)
            assert host.ssh(f"stat -c %U {LOG_FILE}").stdout.strip() == CRON_USER  # ran as the user
            assert host.ssh(f"ls -A {MAIL_DIR}").stdout == "", diagnostics  # no output: nothing mailed
        finally:
            host.ssh("systemctl stop cron", check=False)
        assert gone(cron_pid)

        if not checked_entry:
            check_entry_as_cron_runs_it(host, job, url)

        removed, recap = playbook(audit_cron_state="absent")
        assert removed.returncode == 0 and "changed=2" in recap, removed.stdout + removed.stderr
        assert host.ssh(f"crontab -u {CRON_USER} -l").stdout.strip() == ""

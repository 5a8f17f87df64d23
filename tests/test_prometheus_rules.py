"""The alert rules (deploy/prometheus/worldland-rules.yml) with Debian's promtool and prometheus: the rules
check, their unit tests pass (and can fail), every alert is tested firing and quiet, and a real Prometheus
scraping a real listener fires the providers-offline alert when a provider goes Offline."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
import yaml

from testkit import prometheus
from testkit.fleet import put_in
from testkit.listener import ListenerProcess
from testkit.redis_server import free_port
from worldland.domain.lifecycle import Status
from worldland.protocol.streams import StreamNames
from worldland.state.fleet import Fleet

OFFLINE_ALERT = "WorldlandProvidersOffline"
OFFLINE_ALERT_WITHIN_S = 20  # what the demo needs of the rules as they are


@pytest.fixture(scope="module")
def tools() -> None:
    """promtool and prometheus, fetched when missing: a failure to get them fails the tests wherever
    apt-get and dpkg exist; only a machine without them skips."""
    if not prometheus.can_fetch():
        pytest.skip("no apt-get/dpkg here to fetch Debian's prometheus package")
    status = prometheus.available()
    assert status, status.reason


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(prometheus.RULES.read_text())["groups"] for rule in group["rules"]
    ]


def rule_tests() -> list[dict]:
    return yaml.safe_load(prometheus.RULE_TESTS.read_text())["tests"]


def test_promtool_checks_the_rules(tools):
    done = prometheus.promtool("check", "rules", str(prometheus.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_unit_tests_pass(tools):
    done = prometheus.promtool("test", "rules", str(prometheus.RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rules_unit_tests_fail_on_a_wrong_expectation(tools, tmp_path):
    """The unit tests compare what the rules produce: one changed expectation fails them."""
    text = prometheus.RULE_TESTS.read_text()
    wrong = text.replace(
        "summary: 1 WorldLand provider(s) Offline", "summary: 3 WorldLand provider(s) Offline"
    )
    assert wrong != text
    (tmp_path / "tests").mkdir()
    shutil.copy(prometheus.RULES, tmp_path / prometheus.RULES.name)  # the test file names ../<rules>
    (tmp_path / "tests" / prometheus.RULE_TESTS.name).write_text(wrong)
    done = prometheus.promtool("test", "rules", str(tmp_path / "tests" / prometheus.RULE_TESTS.name))
    assert done.returncode != 0
    assert f"alertname: {OFFLINE_ALERT}" in done.stdout + done.stderr


def test_every_alert_has_severity_summary_description_and_a_firing_and_a_quiet_test():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert len(alerts) >= 6
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(rule["annotations"]) >= {"summary", "description"}, name
        assert (
            "$labels" in rule["annotations"]["description"] or "$value" in rule["annotations"]["description"]
        )
    cases = [case for test in rule_tests() for case in test.get("alert_rule_test", [])]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert fired >= set(alerts), f"never seen firing: {set(alerts) - fired}"
    assert quiet >= set(alerts), f"never seen quiet: {set(alerts) - quiet}"
    for case in cases:
        for expected in case.get("exp_alerts") or []:
            assert {"summary", "description"} <= set(expected["exp_annotations"]), case["alertname"]
            assert expected["exp_labels"]["severity"] == alerts[case["alertname"]]["labels"]["severity"]


def test_every_recording_rule_is_checked_and_the_listener_job_is_the_one_the_rules_name():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    checked = {case["expr"] for test in rule_tests() for case in test.get("promql_expr_test", [])}
    assert recorded <= checked, f"not checked: {recorded - checked}"
    assert any(f'up{{job="{prometheus.LISTENER_JOB}"}}' in rule.get("expr", "") for rule in rules())


# -- a real Prometheus scraping a real listener ------------------------------------------------------------


@pytest.fixture
def listener_metrics(redis_url, keys, tmp_path):
    """``worldland listen`` as a process, metrics on a free loopback port; its ``host:port``."""
    port = free_port()
    names = StreamNames(namespace=f"prom{uuid.uuid4().hex[:6]}:")
    listener = ListenerProcess(redis_url, keys, names, tmp_path, "--metrics-port", str(port)).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        try:
            listener.stop(timeout=15)
        finally:
            listener.kill()  # (when it did not stop in time)


@pytest.mark.timeout(90)
def test_a_real_prometheus_fires_providers_offline_from_a_real_listener(
    tools, fleet: Fleet, listener_metrics
):
    """Debian's prometheus (1 s scrape and evaluation, the repository's rules unchanged) scrapes the
    listener's /metrics; a provider marked Offline in Redis fires the alert within 20 s, and it
    resolves when the provider is back."""
    for pid in ("rig-a", "rig-b"):
        put_in(fleet.store, pid, Status.AVAILABLE)
    with prometheus.PrometheusServer([listener_metrics]) as prom:
        prom.wait_for_targets_up(timeout=30)
        deadline = time.monotonic() + 15
        while not prom.query('job:worldland_providers:max{status="available"} == 2'):
            assert time.monotonic() < deadline, prom.query("worldland_providers")
            time.sleep(0.2)
        assert prom.firing(OFFLINE_ALERT) == []
        assert prom.query('ALERTS{alertname="WorldlandListenerDown"}') == []

        fleet.store.transition("rig-b", Status.OFFLINE)
        marked = time.monotonic()
        [alert] = prom.wait_for_alert(OFFLINE_ALERT, timeout=OFFLINE_ALERT_WITHIN_S)
        took = time.monotonic() - marked
        print(f"{OFFLINE_ALERT} firing {took:.1f} s after the provider was marked Offline")
        assert took < OFFLINE_ALERT_WITHIN_S
        assert alert["labels"] == {
            "alertname": OFFLINE_ALERT,
            "job": prometheus.LISTENER_JOB,
            "status": "offline",
            "severity": "warning",
        }
        assert alert["annotations"]["summary"] == "1 WorldLand provider(s) Offline"
        assert "1 provider(s) of job worldland-listener are Offline" in alert["annotations"]["description"]

        fleet.store.recover("rig-b")
        deadline = time.monotonic() + 15
        while prom.firing(OFFLINE_ALERT):
            assert time.monotonic() < deadline, "the alert did not resolve"
            time.sleep(0.2)

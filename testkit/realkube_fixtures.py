"""pytest wiring for ``testkit/realkube.py`` (a plugin: ``pytest_plugins`` in ``tests/conftest.py``).

- ``real_kube``: one ``RealControlPlane`` per test session (per xdist worker), started on first use;
  skipped, with the reason, where ``../shared/kube`` or etcd cannot be had. A control plane that can be
  had but does not come up is an error, not a skip.
- ``record_kube_target(request, kind, description)``: a test says which Kubernetes API it ran against;
  the run's summary lists them (``kube: real-cluster = real kube-apiserver v1.32.13 from ../shared/kube``),
  and junit XML carries it as the ``kube_target`` property.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.realkube import RealControlPlane, available

PROPERTY = "kube_target"
TEST_SERVER = "test server (testkit/kube_server)"


@pytest.fixture(scope="session")
def real_kube() -> Iterator[RealControlPlane]:
    status = available()
    if not status:
        pytest.skip(
            f"no real control plane ({status.reason}): the Kubernetes tests ran against the test server only"
        )
    with RealControlPlane() as plane:
        yield plane


def record_kube_target(request: pytest.FixtureRequest, kind: str, description: str) -> None:
    request.node.user_properties.append((PROPERTY, f"{kind} = {description}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # From the reports, so that it also works under pytest-xdist (user_properties travel with them).
    seen: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "setup":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name == PROPERTY:
                    seen[value] = seen.get(value, 0) + 1
    for value, count in sorted(seen.items()):
        terminalreporter.write_line(f"kube: {value} ({count} tests)")

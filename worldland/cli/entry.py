"""Console-script entry points. ``pip install worldland`` (a provider machine) brings the agent's
dependencies only; the operators' ``worldland`` command needs ``worldland[control]`` and says so in
one line when it is missing, instead of an ImportError's traceback."""

from __future__ import annotations

import sys

# Top-level modules that only the control plane's extra installs (pyproject.toml, "control").
CONTROL_MODULES = frozenset(
    {"rich", "kubernetes", "prometheus_client", "cryptography", "ansible", "ansible_runner", "hiredis"}
)
CONTROL_EXTRA_HINT = "pip install 'worldland[control]'"


def worldland() -> None:
    """``worldland``: the operators' command (the control plane)."""
    try:
        from worldland.cli.main import main
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in CONTROL_MODULES:
            raise
        sys.stderr.write(
            f"worldland: the control plane's dependencies are not installed (no module {exc.name!r}); "
            f"install them with: {CONTROL_EXTRA_HINT}\n"
        )
        sys.exit(1)
    main()


def worldland_provider() -> None:
    """``worldland-provider``: the provider agent (its commands arrive with the agent)."""
    from worldland.cli.provider import main

    main()

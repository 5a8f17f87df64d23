"""``worldland-provider``: the provider agent's command. It may import only what ``pip install worldland``
brings (protocol, domain, agent): never the control plane."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="worldland")
def main() -> None:
    """Register this machine with the WorldLand network and keep it heartbeating.

    The agent's commands (discover, register, run, join) are not built yet; this command shows that
    the provider side installs and runs without the control plane.
    """


if __name__ == "__main__":
    main()

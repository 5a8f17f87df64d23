"""python -m bench {core,listener,inventory,audit,all} [options]"""

from __future__ import annotations

import sys

from bench import audit, core, inventory, listener

SUITES = {
    "core": core.main,
    "listener": listener.main,
    "inventory": inventory.main,
    "audit": audit.main,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in (*SUITES, "all"):
        sys.exit(f"usage: python -m bench {{{','.join(SUITES)},all}} [options]")
    name, rest = sys.argv[1], sys.argv[2:]
    for suite, run in SUITES.items():
        if name in (suite, "all"):
            run(rest if name == suite else [])


if __name__ == "__main__":
    main()

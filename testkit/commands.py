"""The commands installed beside the running interpreter (the project's virtualenv), run as an
operator runs them."""

from __future__ import annotations

import sys
from pathlib import Path

BIN = Path(sys.executable).parent
WORLDLAND = BIN / "worldland"

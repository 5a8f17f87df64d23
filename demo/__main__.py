"""``python -m demo --hosts N`` (``make demo HOSTS=N``): see demo/__init__.py."""

import sys

from demo.main import main

sys.exit(main())

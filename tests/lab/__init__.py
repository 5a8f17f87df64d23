"""The test lab: SSH provider hosts in network namespaces, with stand-ins for the hardware.

``Lab`` (tests/lab/lab.py) builds and tears down the hosts; ``tests/lab/fixtures.py`` gives pytest the
``lab`` fixture; ``python -m tests.lab up|down|status|sweep|bench`` is the command line.
"""

from tests.lab.gpus import GpuPlan, HostGpus
from tests.lab.lab import Lab, LabError, LabHost, LabUnsafe, lab_resources, sweep

__all__ = ["GpuPlan", "HostGpus", "Lab", "LabError", "LabHost", "LabUnsafe", "lab_resources", "sweep"]

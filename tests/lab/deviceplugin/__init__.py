"""The kubelet's device-plugin gRPC API (v1beta1) for the lab's device-plugin stand-in.

``api.proto`` is the kubelet's own proto (Apache-2.0, The Kubernetes Authors) with its gogoproto import
and options removed; ``api_pb2.py`` and ``api_pb2_grpc.py`` are generated from it by ``generate.py``
(grpcio-tools, pinned in requirements/dev.txt). The generated grpc module imports ``api_pb2`` as a
top-level module, so this directory goes on ``sys.path`` (as the stand-in script does for itself) and
``from tests.lab.deviceplugin import api_pb2, api_pb2_grpc`` gives those same top-level modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

DIR = str(Path(__file__).resolve().parent)
if DIR not in sys.path:
    sys.path.insert(0, DIR)

import api_pb2  # noqa: E402
import api_pb2_grpc  # noqa: E402

__all__ = ["DIR", "api_pb2", "api_pb2_grpc"]

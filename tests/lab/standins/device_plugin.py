"""Device-plugin stand-in: the host's configured GPUs as ``nvidia.com/gpu``, over the kubelet's gRPC API.

``device_plugin.py --plugin-dir /var/lib/kubelet/device-plugins [--resource nvidia.com/gpu]``

Speaks the kubelet's device-plugin API v1beta1 (tests/lab/deviceplugin: the kubelet's proto, generated
with grpcio-tools), as the NVIDIA device plugin would on a real GPU host:

- one device per GPU record of the host's config (``WORLDLAND_LAB_HOST_CONFIG``), ID = its uuid (else
  ``gpu-<index>``), health ``Healthy``, no topology. No GPU, or no NVIDIA driver (``driver: false``,
  where the real plugin finds nothing), means an empty device list: it still registers;
- serves the DevicePlugin service on ``<plugin-dir>/worldland-lab-gpu.sock``: ListAndWatch sends the
  list once and keeps the stream open until shutdown; Allocate answers each container request with
  ``NVIDIA_VISIBLE_DEVICES=<ids>`` (unknown ids: INVALID_ARGUMENT); GetPreferredAllocation and
  PreStartContainer are trivial (and not advertised in the options);
- waits for ``<plugin-dir>/kubelet.sock``, then calls Registration.Register (version v1beta1, endpoint
  ``worldland-lab-gpu.sock``, the resource name). It polls every 0.5 s: when kubelet.sock is a new file
  (a restarted kubelet: other inode or ctime, or gone and back) it registers again; when its own socket
  is gone or replaced (the kubelet clears the directory when it starts) it serves on a new one and
  registers again. A failed Register is retried at the next poll;
- logs one line per event on stderr; on SIGTERM/SIGINT it ends the streams, removes its socket and
  exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

# The generated modules import each other as top-level modules (see tests/lab/deviceplugin/generate.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deviceplugin"))
# gRPC core's own info lines (e.g. a GOAWAY from a stopping kubelet) would interleave with ours.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import api_pb2
import api_pb2_grpc
import grpc
from _common import config, log

VERSION = "v1beta1"
ENDPOINT = "worldland-lab-gpu.sock"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_RESOURCE = "nvidia.com/gpu"
HEALTHY = "Healthy"
POLL_S = 0.5
REGISTER_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0

Identity = tuple[int, int, int]


def emit(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp} device-plugin[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def identity(path: Path) -> Identity | None:
    """Which file ``path`` is (device, inode, ctime): a recreated socket differs, even on a reused inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def device_ids(cfg: dict[str, Any]) -> list[str]:
    """The device IDs the host's GPUs get: their uuids, in index order; none without a driver."""
    if not cfg.get("driver", True):
        return []
    gpus = cfg.get("gpus") or []
    return [str(gpu.get("uuid") or f"gpu-{gpu.get('index', i)}") for i, gpu in enumerate(gpus)]


class DevicePlugin(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, ids: list[str], stop: threading.Event) -> None:
        self.ids = ids
        self.stop = stop
        self.streams = 0  # open ListAndWatch streams
        self.streams_changed = threading.Condition()

    def wait_streams_ended(self, timeout: float) -> bool:
        with self.streams_changed:
            return self.streams_changed.wait_for(lambda: self.streams == 0, timeout)

    def GetDevicePluginOptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False)

    def ListAndWatch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        emit(f"ListAndWatch: sending {len(self.ids)} device(s)")
        with self.streams_changed:
            self.streams += 1
        try:
            yield api_pb2.ListAndWatchResponse(
                devices=[api_pb2.Device(ID=device, health=HEALTHY) for device in self.ids]
            )
            # The devices never change: keep the stream open until shutdown or until the kubelet goes.
            while context.is_active() and not self.stop.wait(POLL_S):
                pass
        finally:
            with self.streams_changed:
                self.streams -= 1
                self.streams_changed.notify_all()

    def Allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        responses = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            unknown = [device for device in ids if device not in self.ids]
            if unknown:
                emit(f"Allocate: unknown device(s) {','.join(unknown)}")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown device(s): {', '.join(unknown)}")
            responses.append(
                api_pb2.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids)})
            )
        emit(f"Allocate: {[list(c.devices_ids) for c in request.container_requests]}")
        return api_pb2.AllocateResponse(container_responses=responses)

    def GetPreferredAllocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        responses = []
        for container in request.container_requests:
            chosen = list(container.must_include_deviceIDs)
            chosen += [d for d in container.available_deviceIDs if d not in chosen]
            responses.append(
                api_pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen[: container.allocation_size])
            )
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def PreStartContainer(self, request: Any, context: grpc.ServicerContext) -> Any:
        return api_pb2.PreStartContainerResponse()


class Endpoint:
    """The plugin's gRPC server on its unix socket, recreated when the socket file is taken away."""

    def __init__(self, path: Path, plugin: DevicePlugin) -> None:
        self.path = path
        self.plugin = plugin
        self.server: grpc.Server | None = None
        self.identity: Identity | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="device-plugin"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.plugin, server)
        if server.add_insecure_port(f"unix:{self.path}") == 0:
            raise RuntimeError(f"cannot listen on {self.path}")
        server.start()
        self.server, self.identity = server, identity(self.path)
        emit(f"serving on {self.path}")

    def intact(self) -> bool:
        return self.identity is not None and identity(self.path) == self.identity

    def stop(self, grace: float | None) -> None:
        if self.server is not None and grace:
            # Shutdown: the streams end with an OK status (stop is set), sent before the server closes
            # its connections; else a client may see the connection drop instead of the stream's end.
            self.plugin.wait_streams_ended(grace)
            time.sleep(0.2)
        if self.server is not None:
            self.server.stop(grace).wait(grace + 1 if grace else 1)
            self.server = None
        # Remove the socket only if it is still the one this server made.
        if self.identity is not None and identity(self.path) == self.identity:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.identity = None


def register(kubelet_socket: Path, resource: str) -> str | None:
    """Registration.Register on the kubelet's socket; the error, or None when it took."""
    request = api_pb2.RegisterRequest(
        version=VERSION, endpoint=ENDPOINT, resource_name=resource, options=api_pb2.DevicePluginOptions()
    )
    try:
        with grpc.insecure_channel(f"unix:{kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return None


class Signals:
    """SIGTERM and SIGINT, seen by the main loop: the handler only records the signal, its wake-up byte
    ends the loop's wait (no lock is taken in the handler, so it cannot deadlock the thread it runs in)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    def wait(self, timeout: float) -> str | None:
        """Up to ``timeout`` seconds; the signal's name once one has come."""
        if self.received is None:
            select.select([self.read_fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 512)
        return self.received


def run(plugin_dir: Path, resource: str, ids: list[str], signals: Signals) -> None:
    stop = threading.Event()  # ends the ListAndWatch streams
    endpoint = Endpoint(plugin_dir / ENDPOINT, DevicePlugin(ids, stop))
    kubelet_socket = plugin_dir / KUBELET_SOCKET
    emit(f"{resource}: {len(ids)} device(s) {','.join(ids) or '(none)'}")
    endpoint.start()
    registered: Identity | None = None  # the kubelet.sock this plugin is registered with
    waiting = False
    last_error: str | None = None
    try:
        while True:
            if not endpoint.intact():
                emit(f"{endpoint.path} was removed or replaced: serving on a new socket")
                endpoint.stop(0)
                endpoint.start()
                registered = None
            kubelet = identity(kubelet_socket)
            if kubelet is None:
                if not waiting:
                    emit(f"waiting for {kubelet_socket}")
                    waiting = True
                registered = None
            elif kubelet != registered:
                if registered is not None:
                    emit(f"{kubelet_socket} was recreated (kubelet restarted)")
                waiting = False
                error = register(kubelet_socket, resource)
                if error is None:
                    registered, last_error = kubelet, None
                    emit(f"registered {resource} (endpoint {ENDPOINT}, {VERSION}) with {kubelet_socket}")
                elif error != last_error:
                    emit(f"Register failed ({error}); retrying every {POLL_S}s")
                    last_error = error
            received = signals.wait(POLL_S)
            if received is not None:
                emit(f"{received}: stopping")
                break
    finally:
        stop.set()
        endpoint.stop(STOP_GRACE_S)
        emit("stopped; socket removed")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="device_plugin.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plugin-dir", required=True, type=Path, help="the kubelet's device-plugins directory"
    )
    parser.add_argument(
        "--resource", default=DEFAULT_RESOURCE, help=f"resource name (default {DEFAULT_RESOURCE})"
    )
    args = parser.parse_args(argv)
    cfg = config()
    if "standin_log" in cfg:
        log(cfg, "device-plugin", argv=argv)
    signals = Signals()
    run(args.plugin_dir.absolute(), args.resource, device_ids(cfg), signals)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The lab's device-plugin stand-in (tests/lab/standins/device_plugin.py) against a fake kubelet.

Real gRPC over unix sockets in a short temporary directory: the fake kubelet serves Registration on
``kubelet.sock`` and records the Register calls; the tests then act as the kubelet on the plugin's
socket (ListAndWatch, Allocate, ...). The stand-in runs as a subprocess, as the lab starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version

from tests.lab.deviceplugin import api_pb2, api_pb2_grpc, generate
from tests.lab.gpus import HostGpus

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "lab" / "standins" / "device_plugin.py"
KUBELET_PROTO = ROOT.parent / "shared" / "kube" / "proto" / "deviceplugin" / "v1beta1" / "api.proto"
ENDPOINT = "worldland-lab-gpu.sock"
RESOURCE = "nvidia.com/gpu"
TIMEOUT = 15.0  # bound on every wait for the stand-in


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """The kubelet's Registration service on ``<dir>/kubelet.sock``, recording each Register."""

    def __init__(self, plugin_dir: Path) -> None:
        self.socket = plugin_dir / "kubelet.sock"
        self.requests: list[Any] = []
        self.cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        assert self.server.add_insecure_port(f"unix:{self.socket}") != 0
        self.server.start()

    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.cond:
            self.requests.append(request)
            self.cond.notify_all()
        return api_pb2.Empty()

    def wait_registers(self, count: int, plugin: Plugin, timeout: float = TIMEOUT) -> list[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.requests) >= count, timeout)
            requests = list(self.requests)
        assert ok, f"{len(requests)} Register call(s) in {timeout}s, wanted {count}\n{plugin.stderr()}"
        return requests

    def stop(self) -> None:
        self.server.stop(0).wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


class Plugin:
    """The stand-in as a subprocess, its stderr in a file."""

    def __init__(self, workdir: Path, plugin_dir: Path, gpus: str) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / ENDPOINT
        host = HostGpus.parse(gpus)
        records = host.records("lab-h1")
        self.ids = [g["uuid"] for g in records]
        cfg = {
            "name": "lab-h1",
            "gpus": records,
            "driver": host.driver,
            "standin_log": str(workdir / "standin.log"),
        }
        config = workdir / "host.json"
        config.write_text(json.dumps(cfg))
        self.log = workdir / "device-plugin.stderr"
        env = dict(os.environ, WORLDLAND_LAB_HOST_CONFIG=str(config))
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--plugin-dir", str(plugin_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd="/",
            )

    def stderr(self) -> str:
        return "stand-in stderr:\n" + self.log.read_text()

    def count(self, text: str) -> int:
        return self.log.read_text().count(text)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket}")

    def stub(self, channel: grpc.Channel) -> Any:
        return api_pb2_grpc.DevicePluginStub(channel)

    def devices(self) -> list[Any]:
        """ListAndWatch's first answer, as the kubelet reads it."""
        with self.channel() as channel:
            stream = self.stub(channel).ListAndWatch(api_pb2.Empty(), timeout=TIMEOUT)
            first = next(stream)
            stream.cancel()
        return list(first.devices)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(check: Callable[[], bool], what: str, plugin: Plugin, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert plugin.proc.poll() is None, f"stand-in exited ({plugin.proc.returncode})\n{plugin.stderr()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{plugin.stderr()}"
        time.sleep(0.05)


def inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_ctime_ns)


@pytest.fixture
def lab() -> Iterator[dict[str, Any]]:
    """A short directory (unix socket paths are limited to 107 bytes); kills what the test left."""
    workdir = Path(tempfile.mkdtemp(prefix="wl-dp-", dir="/tmp"))
    plugin_dir = workdir / "device-plugins"
    plugin_dir.mkdir()
    state: dict[str, Any] = {"dir": workdir, "plugin_dir": plugin_dir, "plugins": [], "kubelets": []}

    def plugin(gpus: str) -> Plugin:
        p = Plugin(workdir, plugin_dir, gpus)
        state["plugins"].append(p)
        return p

    def kubelet() -> FakeKubelet:
        k = FakeKubelet(plugin_dir)
        state["kubelets"].append(k)
        return k

    state["plugin"], state["kubelet"] = plugin, kubelet
    try:
        yield state
    finally:
        for p in state["plugins"]:
            p.stop()
        for k in state["kubelets"]:
            k.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def check_request(request: Any) -> None:
    assert request.version == "v1beta1"
    assert request.endpoint == ENDPOINT
    assert request.resource_name == RESOURCE
    assert not request.options.pre_start_required
    assert not request.options.get_preferred_allocation_available


def test_waits_for_kubelet_registers_lists_and_allocates(lab: dict[str, Any]) -> None:
    plugin = lab["plugin"]("RTX-4090:1+L4:2")
    assert len(plugin.ids) == 3
    # No kubelet yet: the plugin serves, and waits for kubelet.sock.
    wait_for(lambda: plugin.socket.exists(), "plugin socket", plugin)
    wait_for(lambda: plugin.count("waiting for") == 1, "waiting line", plugin)
    kubelet = lab["kubelet"]()
    (request,) = kubelet.wait_registers(1, plugin)
    check_request(request)

    with plugin.channel() as channel:
        stub = plugin.stub(channel)
        options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=TIMEOUT)
        assert not options.pre_start_required and not options.get_preferred_allocation_available

        stream = stub.ListAndWatch(api_pb2.Empty(), timeout=2.0)
        devices = next(stream).devices
        assert [d.ID for d in devices] == plugin.ids
        assert all(d.health == "Healthy" for d in devices)
        assert not any(d.HasField("topology") for d in devices)
        # The stream stays open (no second list, no end) until the deadline.
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        a, b, c = plugin.ids
        answer = stub.Allocate(
            api_pb2.AllocateRequest(
                container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=[b]),
                    api_pb2.ContainerAllocateRequest(devices_ids=[a, c]),
                ]
            ),
            timeout=TIMEOUT,
        )
        envs = [dict(r.envs) for r in answer.container_responses]
        assert envs == [{"NVIDIA_VISIBLE_DEVICES": b}, {"NVIDIA_VISIBLE_DEVICES": f"{a},{c}"}]

        with pytest.raises(grpc.RpcError) as info:
            stub.Allocate(
                api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[a, "GPU-nope"])]
                ),
                timeout=TIMEOUT,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        preferred = stub.GetPreferredAllocation(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=[a, b, c], must_include_deviceIDs=[c], allocation_size=2
                    )
                ]
            ),
            timeout=TIMEOUT,
        )
        assert [list(r.deviceIDs) for r in preferred.container_responses] == [[c, a]]
        assert stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=[a]), timeout=TIMEOUT) == (
            api_pb2.PreStartContainerResponse()
        )

    # Nothing changed in the ~2 s since: no second registration.
    assert len(kubelet.requests) == 1, plugin.stderr()
    assert plugin.count(f"registered {RESOURCE}") == 1


def registered(plugin: Plugin, count: int) -> None:
    """The plugin has had ``count`` answers to Register (it logs one line each, after the answer)."""
    wait_for(lambda: plugin.count(f"registered {RESOURCE}") == count, f"{count} registered lines", plugin)


def test_registers_again_when_the_kubelet_restarts(lab: dict[str, Any]) -> None:
    first = lab["kubelet"]()
    plugin = lab["plugin"]("A100:2")
    check_request(first.wait_registers(1, plugin)[0])
    registered(plugin, 1)

    # A kubelet restart: its socket is a new file at once (new inode), no poll sees it missing.
    first.stop()
    second = lab["kubelet"]()
    check_request(second.wait_registers(1, plugin)[0])
    registered(plugin, 2)
    assert len(first.requests) == 1

    # The kubelet clears the plugin directory when it starts: the plugin serves on a new socket and
    # registers again.
    before = inode(plugin.socket)
    plugin.socket.unlink()
    second.wait_registers(2, plugin)
    registered(plugin, 3)
    after = inode(plugin.socket)
    assert after is not None and after != before
    assert [d.ID for d in plugin.devices()] == plugin.ids

    # The kubelet gone for a while, then back.
    waiting = plugin.count("waiting for")
    second.stop()
    wait_for(lambda: plugin.count("waiting for") == waiting + 1, "waiting line", plugin)
    third = lab["kubelet"]()
    check_request(third.wait_registers(1, plugin)[0])
    registered(plugin, 4)
    assert len(second.requests) == 2
    assert [d.ID for d in plugin.devices()] == plugin.ids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_streams_and_removes_the_socket(lab: dict[str, Any], signum: signal.Signals) -> None:
    kubelet = lab["kubelet"]()
    plugin = lab["plugin"]("RTX-4090:1")
    kubelet.wait_registers(1, plugin)
    with plugin.channel() as channel:
        stream = plugin.stub(channel).ListAndWatch(api_pb2.Empty(), timeout=TIMEOUT)
        assert [d.ID for d in next(stream).devices] == plugin.ids
        started = time.monotonic()
        plugin.proc.send_signal(signum)
        # The stream ends cleanly, well before its deadline.
        with pytest.raises(StopIteration):
            next(stream)
        assert time.monotonic() - started < TIMEOUT / 2
    assert plugin.proc.wait(TIMEOUT) == 0, plugin.stderr()
    assert not plugin.socket.exists()
    assert kubelet.socket.exists()  # the kubelet's socket is not the plugin's to remove
    assert plugin.count(f"{signum.name}: stopping") == 1


@pytest.mark.parametrize("gpus", ["none", "RTX-4090:2/nodriver"])
def test_no_gpu_registers_an_empty_list(lab: dict[str, Any], gpus: str) -> None:
    kubelet = lab["kubelet"]()
    plugin = lab["plugin"](gpus)
    check_request(kubelet.wait_registers(1, plugin)[0])
    assert plugin.devices() == []


def test_generated_code_is_current_and_matches_the_runtime(tmp_path: Path) -> None:
    texts = generate.generate(tmp_path)
    for name, text in texts.items():
        assert (generate.HERE / name).read_text() == text, f"{name} is stale: run generate.py"
    gencode = re.search(r"^# Protobuf Python Version: (\S+)$", texts["api_pb2.py"], re.M)
    assert gencode is not None and gencode.group(1) == protobuf_version
    assert f"GRPC_GENERATED_VERSION = '{grpc.__version__}'" in texts["api_pb2_grpc.py"]


def test_proto_is_the_kubelets_without_gogoproto() -> None:
    if not KUBELET_PROTO.exists():
        pytest.skip(f"{KUBELET_PROTO} not here: api.proto not compared with the kubelet's")
    body = generate.proto_body((generate.HERE / "api.proto").read_text())
    assert body == generate.strip(KUBELET_PROTO.read_text())
    assert "gogoproto" not in body

"""A private redis-server for tests and benchmarks: a free loopback port, no persistence, stopped by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """Starts ``redis-server`` on 127.0.0.1 at a free port (never 6379) in its own directory.

    ``also_bind``: more addresses of this machine to listen on (a lab's gateway, for its hosts).
    ``unix_socket``: also listen on this Unix socket (mode 0700; ``unix_url`` names it).
    """

    def __init__(
        self, persist: bool = False, also_bind: tuple[str, ...] = (), unix_socket: str | Path | None = None
    ) -> None:
        self.persist = persist  # append-only file in the work dir, so data survives a restart
        self.also_bind = also_bind
        self.unix_socket = Path(unix_socket) if unix_socket else None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="worldland-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_at(self, address: str) -> str:
        """The URL on one of ``also_bind``'s addresses."""
        assert address in self.also_bind, address
        return f"redis://{address}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.unix_socket is not None
        return f"unix://{self.unix_socket}?db=0"

    def start(self, attempts: int = 5) -> RedisServer:
        for _ in range(attempts):
            self.port = free_port()
            if self._launch():
                return self
            self.stop()
        raise RuntimeError("could not start redis-server on a free port")

    def restart(self) -> None:
        """Stop and start again on the same port (what a Redis restart looks like to clients)."""
        self.stop()
        if not self._launch():
            raise RuntimeError(f"could not restart redis-server on port {self.port}")

    def _launch(self) -> bool:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it through apt)")
        args = [
            "--bind",
            "127.0.0.1",
            *self.also_bind,
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            str(self.workdir),
        ]
        args += ["--protected-mode", "no"] if self.also_bind else []
        args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"] if self.unix_socket else []
        args += ["--appendonly", "yes" if self.persist else "no", "--appendfsync", "no"]
        args += ["--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    return False  # exited: most likely the port was taken meanwhile
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

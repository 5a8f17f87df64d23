"""A TCP relay: ``python -m testkit.realkube_relay --to 127.0.0.1:PORT ADDRESS:PORT...``.

kube-apiserver listens on one ``--bind-address`` only, and ``testkit/realkube.py`` keeps that at
127.0.0.1; lab hosts reach it at their gateway address through this relay, a process of its own so it is
stopped by PID like the rest. TLS passes through untouched (client certificates and bootstrap tokens
work as they would directly). It prints ``ready`` once every address listens, and refuses wildcard
addresses itself too (``realkube.check_extra_address`` decided which addresses are allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import sys


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if ipaddress.ip_address(host).is_unspecified:
        raise argparse.ArgumentTypeError(f"refusing to listen on {host}")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(target: tuple[str, int], listens: list[tuple[str, int]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    servers = [await asyncio.start_server(handle, host, port, reuse_address=True) for host, port in listens]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.realkube_relay")
    parser.add_argument("--to", required=True, type=_host_port, help="where to relay to (HOST:PORT)")
    parser.add_argument("listen", nargs="+", type=_host_port, help="ADDRESS:PORT to listen on")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.to, args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())

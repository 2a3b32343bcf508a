"""The bare cost of moving a file's bytes over gRPC on this machine, with no work at all.

A grpc.aio server in a child process (as MLServe's is) with one raw-bytes
client-streaming method that only counts what it receives, and the sync client
MLServe's Python client uses sending the file in chunks read lazily: what any
gRPC upload pays before a byte is hashed or written. ``bench upload`` prints it
beside MLServe so the share of an upload that is transport shows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc

from bench.common import cpu_seconds
from tests.support.mlserve import free_port

_METHOD = "/bench.Floor/Count"
_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]


@dataclass(frozen=True)
class Transfer:
    seconds: float
    server_cpu: float
    client_cpu: float


class BareReceiver:
    """The counting server, started in a child process; a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        context = multiprocessing.get_context("spawn")  # no grpc state forked
        self._ready = context.Event()
        self._process = context.Process(target=_serve, args=(self.port, self._ready), daemon=True)

    def __enter__(self) -> BareReceiver:
        self._process.start()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=_OPTIONS)
        try:
            deadline = time.monotonic() + 60
            while not self._ready.wait(0.2):
                if not self._process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the bare gRPC receiver did not start")
            self._send = self._channel.stream_unary(_METHOD)
            self._send(iter([b"warm-up"]), timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._channel.close()
        self._process.terminate()
        self._process.join(10)

    def transfer(self, path: Path, chunk_size: int) -> Transfer:
        """Send the file's bytes in chunks; seconds and both sides' CPU."""
        assert self._process.pid is not None
        server, client = cpu_seconds(self._process.pid), cpu_seconds(os.getpid())
        started = time.perf_counter()
        counted = int.from_bytes(self._send(_chunks(path, chunk_size), timeout=600), "big")
        seconds = time.perf_counter() - started
        if counted != path.stat().st_size:
            raise RuntimeError(f"the receiver counted {counted} bytes of {path.stat().st_size}")
        return Transfer(
            seconds,
            cpu_seconds(self._process.pid) - server,
            cpu_seconds(os.getpid()) - client,
        )


def _chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as handle:
        while block := handle.read(chunk_size):
            yield block


def _serve(port: int, ready: Event) -> None:
    async def count(requests: object, context: object) -> bytes:
        received = 0
        async for message in requests:  # type: ignore[attr-defined]
            received += len(message)
        return received.to_bytes(8, "big")

    async def main() -> None:
        server = grpc.aio.server(options=_OPTIONS)
        handler = grpc.stream_unary_rpc_method_handler(count)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Floor", {"Count": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())

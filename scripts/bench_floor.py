"""The floor of nodosum's design on this machine: plain UDP echoes, with and without the bridge's thread hops.

Usage::

    python scripts/bench_floor.py [--requests N] [--rounds R] [--no-uvloop]

No QUIC and no nodosum protocol here: 100-byte UDP datagrams on 127.0.0.1, sequential, so what is left is the
cost of waking threads and processes. Three scenarios:

1. in-loop: client and server sockets in one process and one event loop (no wake-up at all: the shape of the
   "raw in-loop aioquic exchange" that bench_transport.py measures);
2. 2 processes: the server in a child process (two process wake-ups per exchange);
3. 2 processes through nodosum's bridge: the client calls from its own thread through ``LoopThread.post`` and
   waits on a ``Waiter``; the server's loop hands each datagram to its ``WorkerPool`` and the worker hands the
   answer back with ``LoopThread.post``, as a request handler does (four more thread wake-ups).

(3) minus (2) is what the blocking bridge and the worker pool that the design requires cost per request, before
any QUIC work. bench_transport.py runs these rounds beside its own and adds that cost to the raw 2-process
aioquic exchange to give the lowest p50 that this design can reach here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from benchlib import Result, child_process, expect, merge, new_loop, serve_parent, uvloop_version

from nodosum.bridge import LoopThread, Waiter

PAYLOAD = b"x" * 100
HOST = "127.0.0.1"
WARM_UP = 500


class Echo(asyncio.DatagramProtocol):
    """Answers each datagram at once, on the loop."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class WorkerEcho(Echo):
    """Answers each datagram from a worker thread, as nodosum runs a request handler."""

    def __init__(self, loop_thread: LoopThread) -> None:
        self.loop_thread = loop_thread

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.loop_thread.run_in_worker(self.answer, data, addr)

    def answer(self, data: bytes, addr: tuple[str, int]) -> None:
        self.loop_thread.post(self.transport.sendto, data, addr)


class AwaitingClient(asyncio.DatagramProtocol):
    """Completes one loop future per answer."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(data)


class BlockingClient(AwaitingClient):
    """Completes one Waiter per answer, for a caller blocked on another thread."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter: Waiter | None = None

    def send(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.transport.sendto(PAYLOAD)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.waiter is not None:
            self.waiter.set_result(data)


async def awaiting_exchanges(port: int, requests: int) -> list[int]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(AwaitingClient, remote_addr=(HOST, port))
    lat: list[int] = []
    try:
        for i in range(WARM_UP + requests):
            client.answer = loop.create_future()
            start = time.perf_counter_ns()
            transport.sendto(PAYLOAD)
            await asyncio.wait_for(client.answer, 5)
            if i >= WARM_UP:
                lat.append(time.perf_counter_ns() - start)
    finally:
        transport.close()
    return lat


async def in_loop(requests: int) -> list[int]:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
    try:
        return await awaiting_exchanges(server.get_extra_info("sockname")[1], requests)
    finally:
        server.close()


def blocking_exchanges(port: int, requests: int, use_uvloop: bool) -> list[int]:
    loop_thread = LoopThread("bench-floor-client", worker_threads=1, use_uvloop=use_uvloop)
    loop_thread.start()
    try:
        assert loop_thread.loop is not None
        transport, client = loop_thread.run_coroutine(
            loop_thread.loop.create_datagram_endpoint(BlockingClient, remote_addr=(HOST, port)), 10)
        lat: list[int] = []
        for i in range(WARM_UP + requests):
            waiter = Waiter()
            start = time.perf_counter_ns()
            loop_thread.post(client.send, waiter)
            waiter.result(5)
            if i >= WARM_UP:
                lat.append(time.perf_counter_ns() - start)
        loop_thread.post(transport.close)
        return lat
    finally:
        loop_thread.stop()


def serve_echo(conn: Any, use_uvloop: bool, via_workers: bool) -> None:
    """Child process: a UDP echo, answered on the loop or (``via_workers``) by a worker thread."""
    loop_thread = LoopThread("bench-floor-server", worker_threads=4, use_uvloop=use_uvloop)
    loop_thread.start()
    try:
        assert loop_thread.loop is not None
        factory = (lambda: WorkerEcho(loop_thread)) if via_workers else Echo
        transport, _ = loop_thread.run_coroutine(
            loop_thread.loop.create_datagram_endpoint(factory, local_addr=(HOST, 0)), 10)
        conn.send(("address", transport.get_extra_info("sockname")[:2]))
        serve_parent(conn)
        loop_thread.post(transport.close)
    finally:
        loop_thread.stop()


class Floor:
    """The two echo servers, kept running across rounds; one call of ``round`` measures every scenario."""

    def __init__(self, use_uvloop: bool) -> None:
        self.use_uvloop = use_uvloop
        self._children = contextlib.ExitStack()

    def __enter__(self) -> Floor:
        with self._children as children:
            plain, _ = children.enter_context(child_process(serve_echo, self.use_uvloop, False))
            workers, _ = children.enter_context(child_process(serve_echo, self.use_uvloop, True))
            self.plain_port = expect(plain, "address")[1]
            self.workers_port = expect(workers, "address")[1]
            self._children = children.pop_all()  # both started: keep them until __exit__
        return self

    def __exit__(self, *exc: Any) -> None:
        self._children.close()

    def round(self, runner: asyncio.Runner, requests: int) -> tuple[Result, Result, Result]:
        def timed(name: str, run: Any) -> Result:
            t0 = time.perf_counter()
            lat = run()
            return Result(name, requests, time.perf_counter() - t0, lat)

        return (
            timed("UDP echo, in-loop", lambda: runner.run(in_loop(requests))),
            timed("UDP echo, 2 processes", lambda: runner.run(awaiting_exchanges(self.plain_port, requests))),
            timed("UDP echo, 2 processes, nodosum's thread hops",
                  lambda: blocking_exchanges(self.workers_port, requests, self.use_uvloop)),
        )


def hop_cost_us(plain: Result, hops: Result) -> float:
    """p50 cost of the bridge's and the worker pool's thread hops per request."""
    return hops.pct_us(0.5) - plain.pct_us(0.5)  # type: ignore[operator]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="exchanges per scenario and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario, interleaved")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args(argv)
    use_uvloop = uvloop_version() is not None and not args.no_uvloop
    print(f"event loop: {'uvloop' if use_uvloop else 'asyncio (default)'}; {args.rounds} rounds of "
          f"{args.requests} sequential exchanges of {len(PAYLOAD)} bytes")
    rounds = []
    with asyncio.Runner(loop_factory=lambda: new_loop(use_uvloop)) as runner, Floor(use_uvloop) as floor:
        for _ in range(args.rounds):
            rounds.append(floor.round(runner, args.requests))
    loop_only, plain, hops = (merge(list(col)) for col in zip(*rounds, strict=True))
    for r in (loop_only, plain, hops):
        print(f"  {r.name:<48} p50 {r.pct_us(0.5):7.1f} µs   p99 {r.pct_us(0.99):7.1f} µs")
    print(f"  thread hops of the bridge and worker pool, p50: {hop_cost_us(plain, hops):.1f} µs per request")
    print(f"  process boundary, p50: {plain.pct_us(0.5) - loop_only.pct_us(0.5):.1f} µs per request")  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

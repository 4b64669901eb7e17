"""Transport benchmark: nodosum request/response against a raw aioquic echo measured in the same run.

Usage::

    python scripts/bench_transport.py [--quick] [--requests N] [--duration S] [--rounds R] [--no-uvloop]

Measures, with 100-byte payloads on 127.0.0.1, in interleaved rounds (default 3):

1. raw aioquic, client and server in one process and one event loop, one bidirectional stream,
   length-prefixed frames: (a) sequential request/response ("the raw in-loop aioquic exchange");
   (b) 64 requests in flight, one transmit per loop tick.
2. nodosum, two nodes in separate processes (the server node runs in a spawned child with an echo
   request handler): (a) ``app.request`` from 1 thread, sequential; (b) from 16 threads for a fixed time.
3. For context only: raw aioquic sequential with the echo server in a child process (the cost of the
   process boundary that nodosum's figures include and the in-loop baseline does not), and bench_floor.py's
   plain UDP echoes with and without the thread hops of nodosum's bridge and worker pool. The raw 2-process
   exchange plus those hops is the lowest p50 that this design (a blocking caller on its own thread, the loop
   on another, handlers on a worker pool, peers in separate processes) can reach on this machine.

Then prints a table and the ratios against their targets (figures only; nothing is asserted), the loop
implementation (uvloop if installed, unless --no-uvloop) and the versions. Child processes exit when this
process ends or dies (they read a pipe and stop on EOF). ``--quick`` takes ~15 s, the default ~1 minute.
The machine is noisy: compare ratios from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import multiprocessing
import platform
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aioquic
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench_floor import Floor, hop_cost_us
from benchlib import (Result, child_process, expect, fmt, merge, new_loop, serve_parent, server_cpu,
                      uvloop_version)

PAYLOAD = b"x" * 100
HOST = "127.0.0.1"
ALPN = "bench"
IN_FLIGHT = 64
THREADS = 16
APP_ID = "bench"
INLINE_APP_ID = "bench-inline"  # the same echo, answered on the server's loop thread
SERVER_ID, CLIENT_ID = "bench-server", "bench-client"
TARGET_P50_RATIO = 1.5
TARGET_THREADS_RPS = 10_000

# ------------------------------------------------------------------------------------------ shared helpers


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return its result, wall seconds and process CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


class FrameReader:
    """Length-prefixed (4-byte big-endian) frames out of a byte stream."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            (size,) = struct.unpack_from("!I", self.buf)
            if len(self.buf) < 4 + size:
                break
            frames.append(bytes(self.buf[4:4 + size]))
            del self.buf[:4 + size]
        return frames


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


# ------------------------------------------------------------------------------------------ 1. raw aioquic


def self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


class EchoServer(QuicConnectionProtocol):
    """Echoes every frame back on its stream; aioquic transmits after each received datagram."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.readers: dict[int, FrameReader] = {}

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            reader = self.readers.setdefault(event.stream_id, FrameReader())
            for payload in reader.feed(event.data):
                self._quic.send_stream_data(event.stream_id, frame(payload))


class EchoClient(QuicConnectionProtocol):
    """Requests on one stream; responses complete futures in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader = FrameReader()
        self.waiters: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.stream_id: int | None = None
        self.flush_scheduled = False

    def request(self, payload: bytes, coalesce: bool) -> asyncio.Future[bytes]:
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id()
        fut = self._loop.create_future()
        self.waiters.append(fut)
        self._quic.send_stream_data(self.stream_id, frame(payload))
        if not coalesce:
            self.transmit()
        elif not self.flush_scheduled:  # one transmit per loop tick for everything written in it
            self.flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.transmit()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived) and event.stream_id == self.stream_id:
            for payload in self.reader.feed(event.data):
                self.waiters.popleft().set_result(payload)


def server_config() -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.certificate, config.private_key = self_signed()
    return config


async def raw_client(port: int, requests: int, pipelined: int, where: str) -> list[Result]:
    """Connect to an echo server; measure sequential exchanges, then (if ``pipelined``) 64 in flight."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    async with connect(HOST, port, configuration=config, create_protocol=EchoClient) as client:
        assert isinstance(client, EchoClient)
        for _ in range(500):  # warm-up
            assert await client.request(PAYLOAD, coalesce=False) == PAYLOAD

        lat: list[int] = []
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(requests):
            s = time.perf_counter_ns()
            await client.request(PAYLOAD, coalesce=False)
            lat.append(time.perf_counter_ns() - s)
        results = [Result(f"raw aioquic, {where}, sequential", requests, time.perf_counter() - t0, lat,
                          time.process_time() - c0)]
        if pipelined:
            per_worker = pipelined // IN_FLIGHT

            async def worker() -> None:
                for _ in range(per_worker):
                    await client.request(PAYLOAD, coalesce=True)

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            results.append(Result(f"raw aioquic, {where}, {IN_FLIGHT} in flight, 1 transmit/tick",
                                  per_worker * IN_FLIGHT, time.perf_counter() - t0, None, time.process_time() - c0))
    return results


async def raw_in_loop(requests: int, pipelined: int) -> list[Result]:
    """Client and server in this process and this loop."""
    server = await serve(HOST, 0, configuration=server_config(), create_protocol=EchoServer)
    try:
        return await raw_client(server._transport.get_extra_info("sockname")[1], requests, pipelined, "in-loop")
    finally:
        server.close()


def serve_raw(conn: Any, use_uvloop: bool) -> None:
    """Child process: a raw aioquic echo server (for the informational two-process row)."""

    async def main() -> None:
        server = await serve(HOST, 0, configuration=server_config(), create_protocol=EchoServer)
        conn.send(("address", server._transport.get_extra_info("sockname")[:2]))
        await asyncio.get_running_loop().run_in_executor(None, serve_parent, conn)
        server.close()

    with asyncio.Runner(loop_factory=lambda: new_loop(use_uvloop)) as runner:
        runner.run(main())


# ------------------------------------------------------------------------------------------ 2. nodosum


def serve_node(conn: Any, ca_cert: bytes, ca_key: bytes, use_uvloop: bool) -> None:
    """Child process: an echo node."""
    from nodosum import Node, NodeConfig

    node = None
    try:
        node = Node(NodeConfig(ca_cert=ca_cert, ca_key=ca_key, node_id=SERVER_ID, host=HOST, port=0,
                               use_uvloop=use_uvloop, profile="local", membership="static")).start()
        node.register_application(APP_ID).set_request_handler(lambda payload, sender: payload)
        node.register_application(INLINE_APP_ID).set_request_handler(lambda payload, sender: payload, inline=True)
        conn.send(("address", node.address))
        _, (peer_id, host, port) = conn.recv()
        node.add_peer(peer_id, host, port)
        node.ready(30)
        conn.send(("ready", None))
        serve_parent(conn)
    except BaseException as exc:
        try:
            conn.send(("error", repr(exc)))
        except OSError:
            pass
        raise
    finally:
        if node is not None:
            node.shutdown()


def run_sequential(app: Any, count: int) -> list[int]:
    lat = []
    for _ in range(count):
        s = time.perf_counter_ns()
        app.request(PAYLOAD, SERVER_ID)
        lat.append(time.perf_counter_ns() - s)
    return lat


def run_threads(app: Any, threads: int, duration: float) -> tuple[int, float, list[int]]:
    """``threads`` callers each requesting in a loop for ``duration`` s; returns count, wall time, latencies."""
    start = threading.Barrier(threads + 1)
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def caller(lat: list[int]) -> None:
        start.wait()
        deadline = time.perf_counter() + duration
        try:
            while time.perf_counter() < deadline:
                s = time.perf_counter_ns()
                app.request(PAYLOAD, SERVER_ID)
                lat.append(time.perf_counter_ns() - s)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(lat,), daemon=True) for lat in results]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        print(f"  ! {len(errors)} caller thread(s) failed, first: {errors[0]!r}")
    lat = [x for r in results for x in r]
    return len(lat), elapsed, lat


@contextlib.contextmanager
def nodosum_pair(use_uvloop: bool) -> Iterator[tuple[Any, Any, Any]]:
    """Start the server node in a child process and the client node here; yield (client node, app, pipe)."""
    from nodosum import Node, NodeConfig
    from nodosum.certs import create_ca

    ca_cert, ca_key = create_ca("bench CA")
    with child_process(serve_node, ca_cert, ca_key, use_uvloop) as (pipe, pid):
        node = Node(NodeConfig(ca_cert=ca_cert, ca_key=ca_key, node_id=CLIENT_ID, host=HOST, port=0,
                               use_uvloop=use_uvloop, profile="local", membership="static")).start()
        try:
            app = node.register_application(APP_ID)
            node.register_application(INLINE_APP_ID)
            host, port = expect(pipe, "address")
            node.add_peer(SERVER_ID, host, port)
            pipe.send(("peer", (CLIENT_ID, *node.address)))
            t0 = time.perf_counter()
            node.ready(30)
            expect(pipe, "ready")
            print(f"  nodes connected in {(time.perf_counter() - t0) * 1000:.1f} ms (server pid {pid})")
            assert app.request(PAYLOAD, SERVER_ID) == PAYLOAD
            run_sequential(app, 500)  # warm-up
            run_threads(app, THREADS, 0.5)
            yield node, app, pipe
        finally:
            node.shutdown()


def nodosum_round(app: Any, inline_app: Any, pipe: Any, requests: int,
                  duration: float) -> tuple[Result, Result, Result]:
    s0 = server_cpu(pipe)
    lat, elapsed, cpu = timed(lambda: run_sequential(app, requests))
    seq = Result("nodosum, 1 thread, sequential", requests, elapsed, lat, cpu, server_cpu(pipe) - s0)
    s0 = server_cpu(pipe)
    (count, elapsed, lat), _, cpu = timed(lambda: run_threads(app, THREADS, duration))
    par = Result(f"nodosum, {THREADS} threads", count, elapsed, lat, cpu, server_cpu(pipe) - s0)
    s0 = server_cpu(pipe)
    lat, elapsed, cpu = timed(lambda: run_sequential(inline_app, requests))
    inline = Result("nodosum, 1 thread, sequential, inline handler", requests, elapsed, lat, cpu,
                    server_cpu(pipe) - s0)
    return seq, par, inline


# ------------------------------------------------------------------------------------------ 3. report


def report(rounds: list[tuple[Result, ...]]) -> None:
    raw_seq, raw_pipe, seq, par, inline, raw2_seq, udp_loop, udp2, udp2_hops = (
        merge(list(col)) for col in zip(*rounds, strict=True))
    head = (f"{'scenario':<52} {'req/s':>9} {'(min-max of rounds)':>20} {'p50 µs':>7} {'p99 µs':>7} "
            f"{'cli CPU':>8} {'srv CPU':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in (raw_seq, raw_pipe, seq, par, None, inline, raw2_seq, udp_loop, udp2, udp2_hops):
        if r is None:
            print("for context (not a target):")
            continue
        spread = f"({min(r.per_round):,.0f}-{max(r.per_round):,.0f})"
        print(f"{r.name:<52} {fmt(r.rate):>9} {spread:>20} {fmt(r.pct_us(0.5)):>7} {fmt(r.pct_us(0.99)):>7} "
              f"{fmt(r.per_op_us(r.cpu), '.1f'):>8} {fmt(r.per_op_us(r.server_cpu), '.1f'):>8}")
    print("CPU columns: process CPU µs per request (user+sys, all threads); in-loop raw aioquic runs both sides in\n"
          "one process, so its 'cli CPU' covers both. Latencies are pooled over all rounds.")

    def p50_ratio(a: Result, b: Result) -> float:
        return a.pct_us(0.5) / b.pct_us(0.5)  # type: ignore[operator]

    ratio = p50_ratio(seq, raw_seq)
    hops = hop_cost_us(udp2, udp2_hops)
    floor = raw2_seq.pct_us(0.5) + hops  # type: ignore[operator]
    per_round = ", ".join(f"{p50_ratio(r[2], r[0]):.2f}" for r in rounds)
    rows = [
        ("nodosum sequential p50 / raw in-loop sequential p50", f"{ratio:.2f}x",
         f"target <= {TARGET_P50_RATIO}x: {'met' if ratio <= TARGET_P50_RATIO else 'NOT met'} (rounds: {per_round})"),
        (f"nodosum {THREADS}-thread req/s", f"{par.rate:,.0f}",
         f"target >= {TARGET_THREADS_RPS:,}: {'met' if par.rate >= TARGET_THREADS_RPS else 'NOT met'}"),
        (f"nodosum {THREADS}-thread req/s / raw {IN_FLIGHT}-in-flight req/s", f"{par.rate / raw_pipe.rate:.2f}x", ""),
        ("nodosum sequential req/s / raw in-loop sequential req/s", f"{seq.rate / raw_seq.rate:.2f}x", ""),
        ("raw 2-process sequential p50 / raw in-loop p50", f"{p50_ratio(raw2_seq, raw_seq):.2f}x",
         "(the cost of the process boundary alone)"),
        ("nodosum sequential p50 / raw 2-process sequential p50", f"{p50_ratio(seq, raw2_seq):.2f}x", ""),
        ("nodosum inline-handler p50 / raw in-loop sequential p50", f"{p50_ratio(inline, raw_seq):.2f}x",
         "(no worker-pool hop on the server)"),
        ("thread hops of the bridge and worker pool, p50", f"{hops:.0f} µs",
         "(UDP echo through them minus the plain 2-process UDP echo)"),
        ("design floor: raw 2-process p50 + thread hops", f"{floor:.0f} µs",
         f"= {floor / raw_seq.pct_us(0.5):.2f}x raw in-loop; nodosum is {seq.pct_us(0.5) - floor:.0f} µs above it"),
    ]
    print("\nratios")
    for label, value, note in rows:
        print(f"  {label:<56} {value:>8}   {note}".rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~15 s)")
    parser.add_argument("--requests", type=int, help="sequential requests per round (default 10000, quick 2000)")
    parser.add_argument("--duration", type=float, help="seconds of each 16-thread run (default 10, quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario, interleaved (default 3, quick 2)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args(argv)
    requests = args.requests or (2000 if args.quick else 10_000)
    duration = args.duration or (3.0 if args.quick else 10.0)
    n_rounds = args.rounds or (2 if args.quick else 3)
    pipelined = max(IN_FLIGHT, requests * 4)
    uv = uvloop_version()
    use_uvloop = uv is not None and not args.no_uvloop

    print(f"Python {platform.python_version()} ({sys.implementation.name}), aioquic {aioquic.__version__}, "
          f"uvloop {uv or 'not installed'}; {multiprocessing.cpu_count()} CPUs")
    print(f"event loop: {'uvloop' if use_uvloop else 'asyncio (default)'} (raw baseline and both nodes); "
          f"payload {len(PAYLOAD)} bytes")
    print(f"{n_rounds} rounds of: raw in-loop sequential x{requests} and {IN_FLIGHT}-in-flight x{pipelined}, "
          f"nodosum sequential x{requests} and {THREADS} threads for {duration:g} s, raw 2-process sequential, "
          f"UDP echoes x{requests}")
    rounds: list[tuple[Result, ...]] = []
    with asyncio.Runner(loop_factory=lambda: new_loop(use_uvloop)) as runner, \
            child_process(serve_raw, use_uvloop) as (raw_pipe, _), \
            Floor(use_uvloop) as floor, \
            nodosum_pair(use_uvloop) as (node, app, pipe):
        inline_app = node.application(INLINE_APP_ID)
        assert inline_app.request(PAYLOAD, SERVER_ID) == PAYLOAD
        run_sequential(inline_app, 500)  # warm-up
        loop = runner.get_loop()
        print(f"  raw baseline loop: {type(loop).__module__}.{type(loop).__name__}")
        _, raw_port = expect(raw_pipe, "address")
        for i in range(n_rounds):
            raw = runner.run(raw_in_loop(requests, pipelined))
            ours = nodosum_round(app, inline_app, pipe, requests, duration)
            s0 = server_cpu(raw_pipe)
            (raw2,) = runner.run(raw_client(raw_port, requests, 0, "2 processes"))
            raw2.server_cpu = server_cpu(raw_pipe) - s0
            rounds.append((*raw, *ours, raw2, *floor.round(runner, requests)))
            print(f"  round {i + 1}/{n_rounds}: " + ", ".join(f"{r.rate:,.0f}/s" for r in rounds[-1]))
        stats = node.stats()
    report(rounds)
    print(f"\nclient node counters: {({k: v for k, v in stats.items() if v}) or 'all zero'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

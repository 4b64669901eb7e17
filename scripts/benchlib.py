"""Shared pieces of the benchmark scripts: a scenario's figures, pooling rounds, formatting, child processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def uvloop_version() -> str | None:
    try:
        import uvloop
    except ImportError:
        return None
    return getattr(uvloop, "__version__", "?")


class Result:
    """One scenario's figures: operations, wall time, latencies (ns, per call), client and server CPU s."""

    def __init__(self, name: str, count: int, elapsed: float, latencies_ns: list[int] | None = None,
                 cpu: float | None = None, server_cpu: float | None = None, per_call: int = 1) -> None:
        self.name, self.count, self.elapsed = name, count, elapsed
        self.cpu, self.server_cpu, self.per_call = cpu, server_cpu, per_call
        self.lat = sorted(latencies_ns or [])
        self.per_round = [self.rate]  # the rate of each round, once merged

    @property
    def rate(self) -> float:
        """Operations (requests, single gets, or keys for a batch row) per second."""
        return self.count / self.elapsed

    def pct_us(self, q: float) -> float | None:
        return self.lat[min(len(self.lat) - 1, int(q * len(self.lat)))] / 1000 if self.lat else None

    def per_op_us(self, cpu: float | None) -> float | None:
        return None if cpu is None else cpu / self.count * 1e6


def merge(rounds: list[Result]) -> Result:
    """Pool the rounds of one scenario: total count over total time, all latencies, summed CPU."""
    def total(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]

    out = Result(rounds[0].name, sum(r.count for r in rounds), sum(r.elapsed for r in rounds),
                 [x for r in rounds for x in r.lat], total([r.cpu for r in rounds]),
                 total([r.server_cpu for r in rounds]), rounds[0].per_call)
    out.per_round = [r.rate for r in rounds]
    return out


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


# -- child processes (a pipe to each; a child stops on "stop" or when the pipe closes)


def serve_parent(conn: Any) -> None:
    """In a child: answer "cpu" queries until "stop" or EOF (the parent closed its end or died)."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg == "cpu":
            conn.send(("cpu", time.process_time()))
        elif msg == "stop":
            return


@contextlib.contextmanager
def child_process(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, int]]:
    """Run ``target(pipe_end, *args)`` in a spawned process; yield (our pipe end, pid); always reap it."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child_end, *args), daemon=True, name=f"bench-{target.__name__}")
    try:
        proc.start()
        child_end.close()  # the child sees EOF (and exits) once this process closes parent_end or dies
        yield parent_end, proc.pid  # type: ignore[misc]
    finally:
        try:
            parent_end.send("stop")
        except OSError:
            pass
        parent_end.close()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def expect(conn: Any, kind: str, timeout: float = 60.0) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"server process sent no {kind!r} within {timeout}s")
    got, value = conn.recv()
    if got != kind:
        raise RuntimeError(f"server process: expected {kind!r}, got {got!r}: {value}")
    return value


def server_cpu(conn: Any) -> float:
    conn.send("cpu")
    return expect(conn, "cpu", 10)  # type: ignore[no-any-return]

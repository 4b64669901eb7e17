"""Cache benchmark: mycel gets against a locked cachetools.LRUCache, redis-py and pymemcache, in one run.

Usage::

    python scripts/bench_cache.py [--quick] [--rounds R] [--requests N] [--duration S] [--no-uvloop]

Measures, with 100-byte values on 127.0.0.1, in rounds (default 3) of interleaved slices:

1. Local hits: ``Cache.get(bucket, key)`` in a tight loop on keys this node is the (only) replica of,
   beside ``cachetools.LRUCache`` guarded by a ``threading.Lock`` (``with lock: lru[key]``, same loop).
2. Remote gets: two mycel nodes in separate processes (this script re-runs itself with ``--child`` for the
   other node and its Cache). The client Cache has ``replicas=1`` and only reads keys whose primary is the
   other node (chosen with ``mycel.placement.Placement``), so every get crosses the network: sequential
   (1 thread, p50/p99), 16 threads for a fixed time, and ``get_many`` of 1,000 keys.
3. The same against redis-server (redis-py, one connection pool shared by the threads; MGET) and memcached
   (pymemcache: a Client sequentially, a PooledClient for the threads; get_many), each started here on a
   free port when its binary is installed, and stopped by pid when the run ends.

Then prints the tables and the ratios against their targets (figures only; nothing is asserted), the loop
implementation (uvloop if installed, unless --no-uvloop) and the versions. The child node exits when its
stdin closes (this process ended or died); servers and the child are killed in ``finally``. A missing
server binary or client package prints a "skipped: install X" line and the rest still runs.
``--quick`` takes ~30 s, the default ~2 minutes. The machine is noisy: compare the ratios of one run, not
absolute figures across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchlib import Result, fmt, merge, uvloop_version  # scripts/ is on sys.path when run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

VALUE = b"v" * 100
HOST = "127.0.0.1"
BUCKET = "bench"
THREADS = 16
KEYS = 1000          # distinct keys per key set (local hits, remote gets); also the batch size
BATCH = KEYS
SERVER_ID, CLIENT_ID = "bench-cache-server", "bench-cache-client"
TARGET_LOCAL_RATIO = 0.8      # mycel local hit ops/s / locked LRUCache ops/s, at least
TARGET_P50_RATIO = 5.0        # mycel remote get p50 / redis-py GET p50, at most
TARGET_THREADS_RATIO = 1.0    # mycel 16-thread get ops/s / redis-py 16-thread GET ops/s, at least

# ------------------------------------------------------------------------------------------ shared helpers


def optional(module: str) -> Any:
    """The imported module, or None after printing how to get it."""
    try:
        return __import__(module)
    except ImportError:
        print(f"  skipped: install {module} (pip install {module}) for its rows")
        return None


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user+sys) used so far by process ``pid``, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Target:
    """What a scenario runs against: a name, the server pid (for its CPU) and its operations."""

    def __init__(self, label: str, server_pid: int | None, get: Callable[[str], Any],
                 threaded_get: Callable[[], Callable[[str], Any]], get_many: Callable[[list[str]], Any],
                 keys: list[str], batch_name: str) -> None:
        self.label, self.server_pid, self.get, self.threaded_get = label, server_pid, get, threaded_get
        self.get_many, self.keys, self.batch_name = get_many, keys, batch_name

    def server_cpu(self) -> float | None:
        return None if self.server_pid is None else proc_cpu(self.server_pid)


def measure(name: str, target: Target, fn: Callable[[], tuple[int, list[int]]], per_call: int = 1) -> Result:
    s0, t0, c0 = target.server_cpu(), time.perf_counter(), time.process_time()
    count, lat = fn()
    elapsed, cpu, s1 = time.perf_counter() - t0, time.process_time() - c0, target.server_cpu()
    return Result(name, count, elapsed, lat, cpu, None if s0 is None or s1 is None else s1 - s0, per_call)


def run_sequential(get: Callable[[str], Any], keys: list[str], count: int) -> tuple[int, list[int]]:
    lat = []
    n = len(keys)
    clock = time.perf_counter_ns
    for i in range(count):
        key = keys[i % n]
        s = clock()
        get(key)
        lat.append(clock() - s)
    return count, lat


def run_threads(make_get: Callable[[], Callable[[str], Any]], keys: list[str], threads: int,
                duration: float) -> tuple[int, list[int]]:
    """``threads`` callers each getting keys in a loop for ``duration`` s; returns count and latencies."""
    start = threading.Barrier(threads + 1)
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def caller(index: int, lat: list[int]) -> None:
        try:
            get = make_get()
        except BaseException as exc:
            errors.append(exc)
            start.wait()
            return
        n = len(keys)
        i = index * 61
        clock = time.perf_counter_ns
        start.wait()
        deadline = time.perf_counter() + duration
        try:
            while time.perf_counter() < deadline:
                key = keys[i % n]
                i += 1
                s = clock()
                get(key)
                lat.append(clock() - s)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(i, lat), daemon=True) for i, lat in enumerate(results)]
    for w in workers:
        w.start()
    start.wait()
    for w in workers:
        w.join()
    if errors:
        print(f"  ! {len(errors)} caller thread(s) failed, first: {errors[0]!r}")
    lat = [x for r in results for x in r]
    return len(lat), lat


def run_batches(get_many: Callable[[list[str]], Any], keys: list[str], duration: float,
                min_calls: int = 5) -> tuple[int, list[int]]:
    """``get_many(keys)`` repeatedly for ``duration`` s (at least ``min_calls``); returns keys and latencies."""
    lat = []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline or len(lat) < min_calls:
        s = clock()
        got = get_many(keys)
        lat.append(clock() - s)
        if len(got) != len(keys):
            print(f"  ! a batch returned {len(got)} of {len(keys)} keys")
    return len(lat) * len(keys), lat


# ------------------------------------------------------------------------------------------ 1. local hits


def local_hit_round(cache: Any, local_keys: list[str], lru_mod: Any, count: int,
                    chunk: int = 50_000) -> list[Result]:
    """Tight loops over the same keys: mycel ``Cache.get`` and the LRUCache variants.

    The variants alternate in chunks of ``chunk`` gets, so that load from other processes on a shared
    machine hits all of them alike; each variant's chunks are summed."""
    seq = (local_keys * (chunk // len(local_keys) + 1))[:chunk]
    get, bucket = cache.get, BUCKET

    def mycel_chunk() -> None:
        for key in seq:
            get(bucket, key)

    variants: list[tuple[str, Callable[[], None]]] = [("mycel Cache.get, local hit", mycel_chunk)]
    if lru_mod is not None:
        lru = lru_mod.LRUCache(maxsize=len(local_keys) * 2)
        for key in local_keys:
            lru[key] = VALUE
        lock = threading.Lock()

        def lru_locked_chunk() -> None:
            for key in seq:
                with lock:
                    lru[key]

        def locked_get(key: str) -> Any:
            with lock:
                return lru[key]

        def lru_function_chunk() -> None:
            for key in seq:
                locked_get(key)

        def lru_unlocked_chunk() -> None:
            for key in seq:
                lru[key]

        variants += [("cachetools LRUCache + Lock (with lock: lru[k])", lru_locked_chunk),
                     ("LRUCache + Lock inside a get(key) function", lru_function_chunk),
                     ("LRUCache, no lock", lru_unlocked_chunk)]
    wall = [0.0] * len(variants)
    cpu = [0.0] * len(variants)
    chunks = max(1, count // chunk)
    for _ in range(chunks):
        for i, (_, run) in enumerate(variants):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[i] += time.perf_counter() - t0
            cpu[i] += time.process_time() - c0
    return [Result(name, chunks * chunk, wall[i], cpu=cpu[i]) for i, (name, _) in enumerate(variants)]


# ------------------------------------------------------------------------------------------ 2. mycel nodes


def node_config(**kwargs: Any) -> Any:
    """A NodeConfig for a two-node static cluster (peers added at run time with ``add_peer``)."""
    import dataclasses

    from nodosum import NodeConfig

    if "membership" in {f.name for f in dataclasses.fields(NodeConfig)}:
        kwargs["membership"] = "static"  # without peers the default would be gossip
    return NodeConfig(host=HOST, port=0, profile="local", **kwargs)


def child_main() -> int:
    """``--child``: the other node and its Cache. stdin: JSON lines (spec, then the peer); stdout: status.

    Serves until stdin closes (the parent ended, or died)."""
    spec = json.loads(sys.stdin.readline() or "null")
    if spec is None:
        return 1
    from mycel import Cache
    from nodosum import Node

    node = cache = None
    try:
        node = Node(node_config(ca_cert=spec["ca"][0].encode(), ca_key=spec["ca"][1].encode(), node_id=SERVER_ID,
                                use_uvloop=spec["uvloop"])).start()
        print("address", *node.address, flush=True)
        peer = json.loads(sys.stdin.readline() or "null")
        if peer is None:
            return 1
        peer_id, host, port = peer
        node.add_peer(peer_id, host, int(port))
        node.ready(30)
        cache = Cache(node, replicas=spec["replicas"])
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes the pipe (or dies)
        return 0
    finally:
        if cache is not None:
            cache.close(handoff=False)
        if node is not None:
            node.shutdown()


class ChildNode:
    """This script re-run with ``--child``: line protocol over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="bench-child-stdout", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = 60.0) -> list[str]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"child node sent no {word!r} within {timeout}s") from None
        if line is None:
            raise RuntimeError(f"child node exited (code {self.proc.wait(5)}) before {word!r}")
        parts = line.split()
        if not parts or parts[0] != word:
            raise RuntimeError(f"child node: expected {word!r}, got {line!r}")
        return parts[1:]

    def close(self) -> None:
        """Close its stdin (it shuts down on EOF); kill it if it has not exited within 10 s."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def mycel_pair(use_uvloop: bool) -> Iterator[tuple[Any, Any, int, list[str], list[str]]]:
    """Client node + Cache here, server node + Cache in a child; yield (node, cache, pid, local, remote keys)."""
    from mycel import Cache
    from mycel.placement import Placement
    from nodosum import Node
    from nodosum.certs import create_ca

    ca_cert, ca_key = create_ca("bench CA")
    child = ChildNode()
    node = cache = None
    try:
        child.send({"ca": [ca_cert.decode(), ca_key.decode()], "uvloop": use_uvloop, "replicas": 1})
        node = Node(node_config(ca_cert=ca_cert, ca_key=ca_key, node_id=CLIENT_ID, use_uvloop=use_uvloop)).start()
        host, port = child.expect("address")
        t0 = time.perf_counter()
        node.add_peer(SERVER_ID, host, int(port))
        child.send([CLIENT_ID, *node.address])
        node.ready(30)
        child.expect("ready")
        print(f"  mycel nodes connected in {(time.perf_counter() - t0) * 1000:.0f} ms (child pid {child.pid})")
        cache = Cache(node, replicas=1)
        cache.create_bucket(BUCKET)

        placement = Placement([CLIENT_ID, SERVER_ID])
        local: list[str] = []
        remote: list[str] = []
        i = 0
        while len(local) < KEYS or len(remote) < KEYS:
            key = f"key:{i:06d}"
            i += 1
            side = local if placement.primary(BUCKET, key) == CLIENT_ID else remote
            if len(side) < KEYS:
                side.append(key)
        cache.put_many(BUCKET, {k: VALUE for k in local})
        cache.put_many(BUCKET, {k: VALUE for k in remote})  # one request: they all live on the child
        held = cache.stats()["entries"].get(BUCKET, 0)
        if held != len(local):
            print(f"  ! the client node holds {held} keys, expected exactly the {len(local)} local ones")
        else:
            print(f"  the client node holds only its {held:,} local keys; the {len(remote):,} remote keys are on "
                  "the child")
        if cache.get(BUCKET, remote[0]) != VALUE or cache.get(BUCKET, local[0]) != VALUE:
            print("  ! mycel returned a wrong value")
        yield node, cache, child.pid, local, remote
    finally:
        if cache is not None:
            cache.close(handoff=False)
        if node is not None:
            node.shutdown()
        child.close()


# ------------------------------------------------------------------------------------------ 3. redis, memcached


def _die_with_parent() -> None:
    """In a server's forked child, before exec: get SIGTERM when this process dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


@contextlib.contextmanager
def server_process(binary: str, argv: Callable[[str, int], list[str]]) -> Iterator[tuple[int, int] | None]:
    """Start ``binary`` on a free port; wait until it accepts connections; yield (pid, port); always stop it."""
    path = shutil.which(binary)
    if path is None:
        pkg = "redis-server" if binary == "redis-server" else binary
        print(f"  skipped: install {binary} (apt-get install {pkg}) for its rows")
        yield None
        return
    port = free_port()
    log = tempfile.TemporaryFile()
    # Started before any thread of ours exists, so preexec_fn is safe; it makes the server die with us
    # even if we are SIGKILLed (the finally below covers every other exit).
    proc = subprocess.Popen(argv(path, port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                log.seek(0)
                output = log.read()[-500:].decode(errors="replace")
                raise RuntimeError(f"{binary} exited with {proc.returncode}: {output}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} does not accept connections on port {port}") from None
                time.sleep(0.02)
        print(f"  {binary} running on {HOST}:{port} (pid {proc.pid})")
        yield proc.pid, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def redis_argv(path: str, port: int) -> list[str]:
    return [path, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no"]


def memcached_argv(path: str, port: int) -> list[str]:
    argv = [path, "-l", HOST, "-p", str(port), "-U", "0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # memcached refuses to run as root without -u. "-u root" (loopback only, for this run) rather than
        # another user: changing user would clear the parent-death signal that stops it if we are killed.
        argv += ["-u", "root"]
    return argv


def redis_target(redis_mod: Any, pid: int, port: int, keys: list[str]) -> tuple[Target, str]:
    pool = redis_mod.ConnectionPool(host=HOST, port=port, max_connections=THREADS * 2)
    client = redis_mod.Redis(connection_pool=pool)
    client.mset({k: VALUE for k in keys})
    if client.get(keys[0]) != VALUE:
        print("  ! redis returned a wrong value")
    version = client.info("server").get("redis_version", "?")
    return Target("redis-py", pid, client.get, lambda: client.get, client.mget, keys, "MGET"), version


def memcached_target(pymemcache_mod: Any, pid: int, port: int, keys: list[str]) -> tuple[Target, str]:
    from pymemcache.client.base import Client, PooledClient

    client = Client((HOST, port), no_delay=True, connect_timeout=5, timeout=5)
    pooled = PooledClient((HOST, port), no_delay=True, connect_timeout=5, timeout=5, max_pool_size=THREADS)
    client.set_many({k: VALUE for k in keys}, noreply=False)
    if client.get(keys[0]) != VALUE:
        print("  ! memcached returned a wrong value")
    version = client.version().decode()
    return Target("pymemcache", pid, client.get, lambda: pooled.get, client.get_many, keys, "get_many"), version


# ------------------------------------------------------------------------------------------ rounds and report


def remote_round(targets: list[Target], requests: int, duration: float, batch_duration: float,
                 slices: int) -> dict[str, dict[str, Result]]:
    """One round of the sequential, threaded and batch scenarios of every target.

    Each scenario is cut into ``slices`` that alternate between the targets (in alternating order), so that
    every system is measured under the same machine conditions: on a small VM the scheduler's placement of
    the processes on CPUs (and other tenants) changes the figures by 2-3x for seconds at a time."""
    parts: dict[str, dict[str, list[Result]]] = {t.label: {"seq": [], "par": [], "batch": []} for t in targets}
    for i in range(slices):
        order = targets if i % 2 == 0 else targets[::-1]
        for t in order:
            what = "get" if t.label.startswith("mycel") else "GET"
            parts[t.label]["seq"].append(measure(f"{t.label} {what}, 1 thread", t, functools.partial(
                run_sequential, t.get, t.keys, requests // slices)))
        for t in order:
            what = "get" if t.label.startswith("mycel") else "GET"
            parts[t.label]["par"].append(measure(f"{t.label} {what}, {THREADS} threads", t, functools.partial(
                run_threads, t.threaded_get, t.keys, THREADS, duration / slices)))
        for t in order:
            parts[t.label]["batch"].append(measure(f"{t.label} {t.batch_name} of {BATCH:,} keys", t, functools.partial(
                run_batches, t.get_many, t.keys[:BATCH], batch_duration / slices, 2), BATCH))
    return {label: {kind: merge(rs) for kind, rs in kinds.items()} for label, kinds in parts.items()}


def warm_up(t: Target) -> None:
    run_sequential(t.get, t.keys, 300)
    run_threads(t.threaded_get, t.keys, THREADS, 0.3)
    run_batches(t.get_many, t.keys[:BATCH], 0.0, 2)


def spread(r: Result) -> str:
    return f"({min(r.per_round):,.0f}-{max(r.per_round):,.0f})"


def report(local: dict[str, Result], remote: dict[str, dict[str, Result]]) -> None:
    head = (f"{'single-key gets':<50} {'ops/s':>10} {'(min-max of rounds)':>23} {'p50 µs':>7} {'p99 µs':>7} "
            f"{'cli CPU':>8} {'srv CPU':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    rows: list[Result | str] = []
    names = list(local)
    rows += [local[n] for n in names[:2]]
    if len(names) > 2:
        rows.append("for context:")
        rows += [local[n] for n in names[2:]]
    rows.append("")
    for kind in ("seq", "par"):
        rows += [r[kind] for r in remote.values()]
    for r in rows:
        if isinstance(r, str):
            print(r)
            continue
        print(f"{r.name:<50} {fmt(r.rate):>10} {spread(r):>23} {fmt(r.pct_us(0.5)):>7} {fmt(r.pct_us(0.99)):>7} "
              f"{fmt(r.per_op_us(r.cpu), '.2f'):>8} {fmt(r.per_op_us(r.server_cpu), '.1f'):>8}")
    head = (f"{'batches':<50} {'keys/s':>10} {'(min-max of rounds)':>23} {'mean ms':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'cli CPU':>8} {'srv CPU':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for res in remote.values():
        r = res["batch"]
        p50, p99 = r.pct_us(0.5), r.pct_us(0.99)
        mean_ms = r.per_call / r.rate * 1000
        print(f"{r.name:<50} {fmt(r.rate):>10} {spread(r):>23} {mean_ms:>7.2f} {fmt(p50 and p50 / 1000, '.2f'):>7} "
              f"{fmt(p99 and p99 / 1000, '.2f'):>7} {fmt(r.per_op_us(r.cpu), '.2f'):>8} "
              f"{fmt(r.per_op_us(r.server_cpu), '.2f'):>8}")
    print("ms columns: time per call of 1,000 keys.")
    print("CPU columns: process CPU µs per get (per key for batches), user+sys over all threads; 'cli' is this\n"
          "process (it also runs the mycel client node's loop thread), 'srv' the child node / redis-server /\n"
          "memcached. Local-hit loops are not timed per call (no latencies). Latencies are pooled over rounds.")


def ratios(local_rounds: list[dict[str, Result]], remote_rounds: dict[str, list[dict[str, Result]]],
           local: dict[str, Result], remote: dict[str, dict[str, Result]]) -> None:
    print("\nratios")
    mycel_name, lru_name = "mycel Cache.get, local hit", "cachetools LRUCache + Lock (with lock: lru[k])"

    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<58} {value:>8}   {note}".rstrip())

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if lru_name in local:
        ratio = local[mycel_name].rate / local[lru_name].rate
        per = ", ".join(f"{r[mycel_name].rate / r[lru_name].rate:.2f}" for r in local_rounds)
        line("mycel local hit / locked LRUCache (ops/s)", f"{ratio:.2f}x",
             f"target >= {TARGET_LOCAL_RATIO}x: {verdict(ratio >= TARGET_LOCAL_RATIO)} (rounds: {per})")
    else:
        line("mycel local hit / locked LRUCache (ops/s)", "n/a", "(cachetools skipped)")
    mycel = remote["mycel"]

    def p50(r: Result) -> float:
        return r.pct_us(0.5)  # type: ignore[return-value]

    for other, targets in (("redis-py", True), ("pymemcache", False)):
        if other not in remote:
            line(f"mycel vs {other}", "n/a", f"(no {other} figures: see the skipped lines above)")
            continue
        o = remote[other]
        rr = zip(remote_rounds["mycel"], remote_rounds[other], strict=True)
        per_p50 = ", ".join(f"{p50(m['seq']) / p50(x['seq']):.2f}" for m, x in rr)
        ratio = p50(mycel["seq"]) / p50(o["seq"])
        note = f"target <= {TARGET_P50_RATIO:g}x: {verdict(ratio <= TARGET_P50_RATIO)} " if targets else "info "
        line(f"mycel remote get p50 / {other} GET p50", f"{ratio:.2f}x", f"{note}(rounds: {per_p50})")
        rr = zip(remote_rounds["mycel"], remote_rounds[other], strict=True)
        per_par = ", ".join(f"{m['par'].rate / x['par'].rate:.2f}" for m, x in rr)
        ratio = mycel["par"].rate / o["par"].rate
        note = f"target >= {TARGET_THREADS_RATIO:g}x: {verdict(ratio >= TARGET_THREADS_RATIO)} " if targets else "info "
        line(f"mycel {THREADS}-thread get ops/s / {other} {THREADS}-thread", f"{ratio:.2f}x",
             f"{note}(rounds: {per_par})")
        line(f"mycel sequential get ops/s / {other} sequential", f"{mycel['seq'].rate / o['seq'].rate:.2f}x", "info")
        line(f"mycel get_many keys/s / {other} {o['batch'].name.split()[1]} keys/s",
             f"{mycel['batch'].rate / o['batch'].rate:.2f}x", "info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~30 s)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario, interleaved (default 3, quick 2)")
    parser.add_argument("--requests", type=int, help="sequential gets per round (default 5000, quick 2000)")
    parser.add_argument("--duration", type=float, help="seconds of each 16-thread run (default 8, quick 2.5)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main()
    n_rounds = args.rounds or (2 if args.quick else 3)
    requests = args.requests or (2000 if args.quick else 5000)
    duration = args.duration or (2.5 if args.quick else 8.0)
    batch_duration = 0.7 if args.quick else 2.0
    local_count = 300_000 if args.quick else 1_000_000
    slices = 2 if args.quick else 4
    uv = uvloop_version()
    use_uvloop = uv is not None and not args.no_uvloop
    started = time.perf_counter()

    import aioquic

    print(f"Python {platform.python_version()} ({sys.implementation.name}), aioquic {aioquic.__version__}, "
          f"uvloop {uv or 'not installed'}; {multiprocessing.cpu_count()} CPUs")
    cachetools_mod = optional("cachetools")
    redis_mod = optional("redis")
    pymemcache_mod = optional("pymemcache")
    versions = [f"{name} {getattr(m, '__version__', '?')}" for name, m in
                (("cachetools", cachetools_mod), ("redis-py", redis_mod), ("pymemcache", pymemcache_mod)) if m]
    print(f"clients: {', '.join(versions) or 'none'}")
    print(f"event loop: {'uvloop' if use_uvloop else 'asyncio (default)'} (both mycel nodes); "
          f"values {len(VALUE)} bytes; {KEYS:,} keys per set")
    print(f"{n_rounds} rounds of: local hits x{local_count:,}; per system sequential x{requests:,}, {THREADS} threads "
          f"for {duration:g} s, batches of {BATCH:,} for {batch_duration:g} s;\n  each cut into {slices} slices "
          f"that alternate between the systems")

    local_rounds: list[dict[str, Result]] = []
    remote_rounds: dict[str, list[dict[str, Result]]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally clauses run
    with contextlib.ExitStack() as stack:
        # the servers first, while this process has no other thread (see server_process)
        redis = stack.enter_context(server_process("redis-server", redis_argv)) if redis_mod else None
        memcached = stack.enter_context(server_process("memcached", memcached_argv)) if pymemcache_mod else None
        node, cache, child_pid, local_keys, remote_keys = stack.enter_context(mycel_pair(use_uvloop))
        loop = getattr(getattr(node, "_loop", None), "loop", None)
        if loop is not None:
            print(f"  client node loop: {type(loop).__module__}.{type(loop).__name__}")
        targets = [Target("mycel", child_pid, functools.partial(cache.get, BUCKET),
                          lambda: functools.partial(cache.get, BUCKET), functools.partial(cache.get_many, BUCKET),
                          remote_keys, "get_many")]
        servers = []
        if redis is not None:
            t, v = redis_target(redis_mod, *redis, remote_keys)
            targets.append(t)
            servers.append(f"redis-server {v}")
        if memcached is not None:
            t, v = memcached_target(pymemcache_mod, *memcached, remote_keys)
            targets.append(t)
            servers.append(f"memcached {v}")
        if servers:
            print(f"servers: {', '.join(servers)}")
        for t in targets:
            warm_up(t)
        local_hit_round(cache, local_keys, cachetools_mod, 20_000, 20_000)  # warm-up
        for i in range(n_rounds):
            local_rounds.append({r.name: r for r in local_hit_round(cache, local_keys, cachetools_mod, local_count)})
            for label, results in remote_round(targets, requests, duration, batch_duration, slices).items():
                remote_rounds.setdefault(label, []).append(results)
            summary = [f"local {local_rounds[-1]['mycel Cache.get, local hit'].rate:,.0f}/s"]
            summary += [f"{label} {rs[-1]['seq'].rate:,.0f}/{rs[-1]['par'].rate:,.0f}/{rs[-1]['batch'].rate:,.0f}"
                        for label, rs in remote_rounds.items()]
            print(f"  round {i + 1}/{n_rounds} (seq/{THREADS}-thread/batch keys per s): " + ", ".join(summary))
        cache_stats = cache.stats()
        node_stats = node.stats()

    local = {name: merge([r[name] for r in local_rounds]) for name in local_rounds[0]}
    remote = {label: {kind: merge([r[kind] for r in rs]) for kind in rs[0]} for label, rs in remote_rounds.items()}
    report(local, remote)
    ratios(local_rounds, remote_rounds, local, remote)
    interesting = {k: v for k, v in cache_stats.items() if v and k not in ("entries",)}
    print(f"\nclient cache counters: {interesting or 'all zero'}; client node counters: "
          f"{({k: v for k, v in node_stats.items() if v}) or 'all zero'}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

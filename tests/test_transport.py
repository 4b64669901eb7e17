"""Nodes on 127.0.0.1 exchanging messages and requests over QUIC."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nodosum import (
    BackpressureError,
    ApplicationError,
    MessageTooLarge,
    NodeUnreachable,
    RemoteError,
    RequestTimeout,
)
from nodosum.errors import LoopThreadError, NodeNotRunning
from nodosum.transport.frames import encode_data, encode_stream_init

from .conftest import connection_to, open_sockets, start_node, wait_for


def echo_apps(nodes, app_id="echo"):
    apps = {}
    for node in nodes:
        app = node.register_application(app_id)
        app.set_request_handler(lambda payload, sender, me=node.node_id: f"{me}<-{sender}:".encode() + payload)
        apps[node.node_id] = app
    return apps


def test_broadcast_reaches_every_other_node_with_sender_id(cluster3):
    received: dict[str, list[tuple[bytes, str]]] = {n.node_id: [] for n in cluster3}
    apps = {}
    for node in cluster3:
        app = apps[node.node_id] = node.register_application("chat")
        app.set_receive_handler(lambda p, s, me=node.node_id: received[me].append((p, s)))
    apps["a"].send(b"hello all")
    assert wait_for(lambda: received["b"] and received["c"])
    assert received["b"] == [(b"hello all", "a")]
    assert received["c"] == [(b"hello all", "a")]
    assert received["a"] == []  # None means every *other* member


def test_requests_across_every_pair(cluster3):
    apps = echo_apps(cluster3)
    for src in cluster3:
        for dst in cluster3:
            reply = apps[src.node_id].request(b"ping", dst.node_id, timeout=5)
            assert reply == f"{dst.node_id}<-{src.node_id}:ping".encode()


def test_nodes_lists_every_member(cluster3):
    app = cluster3[0].register_application("x")
    assert app.nodes() == ["a", "b", "c"]


def test_1000_requests_from_16_threads(cluster3):
    apps = echo_apps(cluster3)
    targets = ["b", "c"]

    def call(i: int) -> bool:
        payload = f"request-{i}".encode() + os.urandom(16)
        target = targets[i % 2]
        return apps["a"].request(payload, target, timeout=20) == f"{target}<-a:".encode() + payload

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(1000)))
    assert all(results) and len(results) == 1000


def test_handler_calling_request_does_not_deadlock(cluster3):
    a, b, c = cluster3
    apps = echo_apps([c])
    app_a = a.register_application("chain")
    app_b = b.register_application("chain")
    app_c = c.application("echo")
    app_b_echo = b.register_application("echo")

    def relay(payload: bytes, sender: str) -> bytes:
        # runs on b's worker thread and makes a blocking call of its own
        return app_b_echo.request(payload, "c", timeout=5) + b"|via-b"

    app_b.set_request_handler(relay)
    assert app_a.request(b"x", "b", timeout=10) == b"c<-b:x|via-b"
    assert apps["c"] is app_c


def test_named_stream_is_independent_of_default(cluster3):
    a, b, _ = cluster3
    app_a = a.register_application("streams")
    app_b = b.register_application("streams")
    release = threading.Event()
    default_got: list[bytes] = []
    named_got: list[bytes] = []

    def slow_default(payload: bytes, sender: str) -> None:
        release.wait(20)
        default_got.append(payload)

    app_b.set_receive_handler(slow_default)
    app_b.set_receive_handler(lambda p, s: named_got.append(p), stream="metrics")
    app_a.open_stream("metrics", "b")
    app_a.send(b"blocked", ["b"])
    for i in range(200):
        app_a.send_on_stream("metrics", str(i).encode(), "b")
    # the named stream is delivered, in order, while the default stream's handler is stuck
    assert wait_for(lambda: len(named_got) == 200)
    assert named_got == [str(i).encode() for i in range(200)]
    assert default_got == []
    release.set()
    assert wait_for(lambda: default_got == [b"blocked"])


def test_handler_sleeping_past_timeout_raises_request_timeout_on_time(cluster3):
    a, b, _ = cluster3
    app_a = a.register_application("slow")
    app_b = b.register_application("slow")
    done = threading.Event()
    app_b.set_request_handler(lambda p, s: (done.wait(10), b"late")[1])
    start = time.monotonic()
    with pytest.raises(RequestTimeout):
        app_a.request(b"x", "b", timeout=0.5)
    elapsed = time.monotonic() - start
    done.set()
    assert 0.45 <= elapsed < 1.5
    # the late response is dropped and the node keeps working
    app_b.set_request_handler(lambda p, s: b"fast")
    assert app_a.request(b"x", "b", timeout=5) == b"fast"


def test_request_to_stopped_node_fails_within_timeout(cluster3):
    a, b, c = cluster3
    apps = echo_apps([a, b])
    assert apps["a"].request(b"x", "b") == b"b<-a:x"
    b.shutdown()
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises((NodeUnreachable, RequestTimeout)):
            apps["a"].request(b"x", "b", timeout=2)
        assert time.monotonic() - start < 3


def test_remote_errors_carry_the_message(cluster3):
    a, b, _ = cluster3
    app_a = a.register_application("err")
    app_b = b.register_application("err")
    with pytest.raises(RemoteError, match="no request handler"):
        app_a.request(b"x", "b")

    def boom(payload: bytes, sender: str) -> bytes:
        raise ValueError("bad thing " + payload.decode())

    app_b.set_request_handler(boom)
    with pytest.raises(RemoteError) as info:
        app_a.request(b"42", "b")
    assert info.value.remote_message == "ValueError: bad thing 42"
    assert info.value.node_id == "b"
    app_b.set_request_handler(lambda p, s: "not bytes")  # type: ignore[arg-type,return-value]
    with pytest.raises(RemoteError, match="not bytes"):
        app_a.request(b"x", "b")
    other = a.register_application("only-on-a")
    with pytest.raises(RemoteError, match="no application 'only-on-a'"):
        other.request(b"x", "b")


def test_unknown_node_and_bad_payloads(cluster3):
    app = cluster3[0].register_application("bad")
    with pytest.raises(NodeUnreachable, match="not a member"):
        app.request(b"x", "zed")
    with pytest.raises(NodeUnreachable):
        app.send(b"x", ["zed"])
    with pytest.raises(TypeError):
        app.request("text", "b")  # type: ignore[arg-type]
    with pytest.raises(MessageTooLarge):
        app.request(b"x" * (cluster3[0].config.max_frame_size + 1), "b")
    with pytest.raises(MessageTooLarge):
        app.send(b"x" * (cluster3[0].config.max_frame_size + 1))


def test_large_payloads_round_trip(cluster3):
    apps = echo_apps(cluster3)
    big = os.urandom(3 * 1024 * 1024)
    assert apps["a"].request(big, "c", timeout=20) == b"c<-a:" + big


def test_request_to_self_runs_local_handler(cluster3):
    apps = echo_apps(cluster3)
    assert apps["a"].request(b"me", "a") == b"a<-a:me"


def test_register_application_twice_is_an_error(cluster3):
    node = cluster3[0]
    node.register_application("dup")
    with pytest.raises(ApplicationError):
        node.register_application("dup")
    with pytest.raises(ApplicationError):
        node.application("missing")
    assert node.application("dup").app_id == "dup"


def test_blocking_call_from_loop_thread_is_refused(cluster3):
    a = cluster3[0]
    app = a.register_application("loop")
    errors: list[BaseException] = []

    def on_loop() -> None:
        try:
            app.request(b"x", "b")
        except BaseException as exc:  # recorded and asserted below
            errors.append(exc)

    a._loop_thread.loop.call_soon_threadsafe(on_loop)
    assert wait_for(lambda: errors)
    assert isinstance(errors[0], LoopThreadError)


def _raw_stream(node, peer_id: str, chunks: list[bytes], end: bool) -> None:
    """Open a new stream from ``node`` to ``peer_id`` and write raw bytes on it."""

    def write() -> None:
        conn = node._messaging.connections.table.adopted(peer_id)
        stream_id = conn.new_stream()
        for i, chunk in enumerate(chunks):
            conn.send(stream_id, chunk, end_stream=end and i == len(chunks) - 1)

    node._loop_thread.call(write)


@pytest.mark.parametrize(
    "chunks,end",
    [
        ([b"\x00\x00\x00\x05garbage-bytes-here"], False),  # unknown frame type
        ([b"\xff\xff\xff\xff" + b"x" * 100], False),  # oversize length
        ([encode_data(b"no init first")], False),  # DATA before STREAM_INIT
        ([encode_stream_init("a", "echo", "default"), b"\x00\x00\x00\x20\x03\x00"], True),  # truncated, then FIN
        ([os.urandom(2000)], False),
    ],
)
def test_garbage_frames_close_only_their_stream(cluster3, chunks, end):
    a, b, _ = cluster3
    apps = echo_apps(cluster3)
    got: list[bytes] = []
    apps["b"].set_receive_handler(lambda p, s: got.append(p))
    assert apps["a"].request(b"before", "b") == b"b<-a:before"
    before = b.stats().get("frames_bad", 0)
    _raw_stream(a, "b", chunks, end)
    assert wait_for(lambda: b.stats().get("frames_bad", 0) == before + 1)
    # the connection and the default stream still serve
    assert apps["a"].request(b"after", "b") == b"b<-a:after"
    apps["a"].send(b"still", ["b"])
    assert wait_for(lambda: got == [b"still"])


def test_random_udp_garbage_is_dropped(cluster3):
    a, b, _ = cluster3
    apps = echo_apps(cluster3)
    rng = random.Random(1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(10_000):
            size = rng.choice([1, 5, 40, 1200, 1300])
            data = bytearray(rng.randbytes(size))
            if i % 3 == 0:
                data[0] |= 0xC0  # looks like a QUIC long header
            sock.sendto(bytes(data), b.address)
            if i % 500 == 0:
                time.sleep(0.001)  # let the loop keep up; we want drops counted, not socket overflows
    assert wait_for(lambda: b.stats().get("datagrams_dropped", 0) > 1000, timeout=20)
    for _ in range(20):
        assert apps["a"].request(b"ok", "b") == b"b<-a:ok"
    assert b.member_ids() == ["a", "b", "c"]


def test_shutdown_leaves_no_thread_task_or_socket(ca):
    baseline_sockets = open_sockets()
    baseline_threads = set(threading.enumerate())
    nodes = [start_node(ca, n) for n in ("s1", "s2")]
    from .conftest import connect_all

    connect_all(nodes)
    apps = echo_apps(nodes)
    assert apps["s1"].request(b"x", "s2") == b"s2<-s1:x"
    loops = [n._loop_thread.loop for n in nodes]
    for node in nodes:
        node.shutdown()
        node.shutdown()  # idempotent
    assert set(threading.enumerate()) <= baseline_threads
    assert open_sockets() == baseline_sockets
    for loop in loops:
        assert loop.is_closed()
    with pytest.raises(NodeNotRunning):
        apps["s1"].request(b"x", "s2")
    with pytest.raises(NodeNotRunning):
        nodes[0].start()


def test_member_events_reach_listeners(ca):
    a = start_node(ca, "ev-a")
    b = start_node(ca, "ev-b")
    try:
        events = []
        a.on_member_event(events.append)
        a.add_peer("ev-b", *b.address)
        assert wait_for(lambda: [e.kind.value for e in events] == ["join"])
        assert events[0].member.node_id == "ev-b"
        a.remove_peer("ev-b")
        assert wait_for(lambda: [e.kind.value for e in events] == ["join", "leave"])
        with pytest.raises(NodeUnreachable):
            a.register_application("m").request(b"x", "ev-b")
    finally:
        a.shutdown()
        b.shutdown()


def test_reconnects_after_peer_restarts(ca):
    a = start_node(ca, "r-a")
    b = start_node(ca, "r-b")
    port = b.address[1]
    try:
        a.add_peer("r-b", *b.address)
        b.add_peer("r-a", *a.address)
        a.ready(10)
        app_a = a.register_application("e")
        app_b = b.register_application("e")
        app_b.set_request_handler(lambda p, s: b"one")
        assert app_a.request(b"x", "r-b") == b"one"
        b.shutdown()
        b = start_node(ca, "r-b", port=port)
        b.add_peer("r-a", *a.address)
        b.register_application("e").set_request_handler(lambda p, s: b"two")
        a.ready(20)

        def answered() -> bool:
            try:
                return app_a.request(b"x", "r-b", timeout=2) == b"two"
            except (NodeUnreachable, RequestTimeout):
                return False

        assert wait_for(answered, timeout=20, interval=0.2)
    finally:
        a.shutdown()
        b.shutdown()


def test_simultaneous_dials_end_with_one_connection(ca):
    nodes = [start_node(ca, n) for n in ("d-a", "d-b")]
    try:
        a, b = nodes
        a.add_peer("d-b", *b.address)
        b.add_peer("d-a", *a.address)
        app_a = a.register_application("e")
        app_b = b.register_application("e")
        app_a.set_request_handler(lambda p, s: b"A")
        app_b.set_request_handler(lambda p, s: b"B")
        start = threading.Barrier(2)
        first: list[bytes] = []

        def call(app, target: str) -> None:  # both sides want each other at once: both may dial
            start.wait(5)
            first.append(app.request(b"x", target))

        callers = [threading.Thread(target=call, args=args) for args in ((app_a, "d-b"), (app_b, "d-a"))]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        assert sorted(first) == [b"A", b"B"]
        for _ in range(50):
            assert app_a.request(b"x", "d-b") == b"B"
            assert app_b.request(b"x", "d-a") == b"A"
        conn_a, conn_b = connection_to(a, "d-b"), connection_to(b, "d-a")
        # both sides use the same connection: the one dialled by the smaller id, if it dialled
        assert conn_a.dialled != conn_b.dialled
        stats = a.stats()
        if stats.get("dials", 0) > stats.get("dial_failures", 0):  # a's own dial got through: the rule keeps it
            assert conn_a.dialled
        assert conn_a.quic.host_cid in {c.cid for c in conn_b.quic._peer_cid_available} | {
            conn_b.quic._peer_cid.cid
        }
    finally:
        for node in nodes:
            node.shutdown()


def test_extra_connection_to_a_live_peer_is_retired_after_the_current_one_answers(make_cluster):
    # Both sides see a connection that the duplicate rule would retire, probe their current one,
    # get an answer, and keep it: a live peer is never taken for a restarted one.
    a, b = make_cluster(["p-a", "p-b"])
    app_a = a.register_application("e")
    b.register_application("e").set_request_handler(lambda p, s: b"B")
    assert app_a.request(b"x", "p-b") == b"B"
    before = (connection_to(a, "p-b"), connection_to(b, "p-a"))
    b._loop_thread.call(lambda: b._endpoint.dial(a.address, "p-a"))  # b dials a second time
    assert wait_for(lambda: a.stats().get("connections_duplicate", 0) >= 1
                    and b.stats().get("connections_duplicate", 0) >= 1, timeout=10)
    after = (connection_to(a, "p-b"), connection_to(b, "p-a"))
    assert after == before
    assert a.stats().get("connections_unresponsive", 0) == 0 and b.stats().get("connections_unresponsive", 0) == 0
    for _ in range(20):
        assert app_a.request(b"x", "p-b") == b"B"


def test_sender_gets_backpressure_when_peer_stalls(make_cluster):
    a, b = make_cluster(["bp-a", "bp-b"], max_queued_bytes=1024 * 1024)
    app_a = a.register_application("bulk")
    got: list[int] = []
    b.register_application("bulk").set_receive_handler(lambda p, s: got.append(len(p)))
    app_a.send(b"connect", ["bp-b"])  # connections open on first use: have it open before b stalls
    assert wait_for(lambda: got == [7])
    got.clear()
    stalled = threading.Event()
    release = threading.Event()

    def stall() -> None:  # b's loop stops reading and acknowledging
        stalled.set()
        release.wait(20)

    b._loop_thread.loop.call_soon_threadsafe(stall)
    assert stalled.wait(5)
    chunk = b"z" * 256 * 1024
    sent = 0
    try:
        with pytest.raises(BackpressureError):
            for _ in range(200):  # 50 MB, far more than flow control lets through
                app_a.send(chunk, ["bp-b"])
                sent += 1
    finally:
        release.set()
    assert 4 <= sent < 200
    # once b catches up, everything accepted arrives and sending works again
    assert wait_for(lambda: len(got) == sent, timeout=30)
    app_a.send(b"again", ["bp-b"])
    assert wait_for(lambda: len(got) == sent + 1)


def test_idle_connection_is_kept_alive(make_cluster):
    # QUIC's idle timeout is 1 s here; keep-alives hold the connection open while it waits
    # for application traffic, until its own (longer) idle close
    a, b = make_cluster(["ka-a", "ka-b"], idle_timeout=1.0, keepalive_interval=0.25, connection_idle_timeout=8.0)
    b.register_application("e").set_request_handler(lambda p, s: b"B")
    assert a.register_application("e").request(b"x", "ka-b") == b"B"
    conn = connection_to(a, "ka-b")
    time.sleep(3)  # three QUIC idle timeouts with no application traffic (what is tested is idleness itself)
    assert connection_to(a, "ka-b") is conn
    assert not conn.closed


def test_request_future_keeps_many_in_flight_from_one_thread(cluster3):
    apps = echo_apps(cluster3)
    futures = [apps["a"].request_future(str(i).encode(), "bc"[i % 2], timeout=10) for i in range(500)]
    futures.append(apps["a"].request_future(b"self", "a"))
    results = [f.result(20) for f in futures]
    assert results[:500] == [f"{'bc'[i % 2]}<-a:{i}".encode() for i in range(500)]
    assert results[500] == b"a<-a:self"


def test_request_future_times_out_and_fails_fast_for_unknown_node(cluster3):
    a, b, _ = cluster3
    app_a = a.register_application("f")
    release = threading.Event()
    b.register_application("f").set_request_handler(lambda p, s: (release.wait(10), b"")[1])
    start = time.monotonic()
    fut = app_a.request_future(b"x", "b", timeout=0.3)
    with pytest.raises(RequestTimeout):
        fut.result(5)
    assert time.monotonic() - start < 2
    release.set()
    with pytest.raises(NodeUnreachable):
        app_a.request_future(b"x", "nobody").result(5)
    a.application("f").set_request_handler(lambda p, s: (release.wait(10), b"")[1])
    release.clear()
    with pytest.raises(RequestTimeout):
        app_a.request_future(b"x", "a", timeout=0.3).result(5)
    release.set()


def test_inline_handler_answers_and_cannot_block(cluster3):
    a, b, _ = cluster3
    app_a = a.register_application("inline")
    app_b = b.register_application("inline")
    threads: list[str] = []

    def handler(payload: bytes, sender: str) -> bytes:
        threads.append(threading.current_thread().name)
        if payload == b"block":
            return app_b.request(b"x", "a")  # a blocking call on the loop thread
        return payload[::-1]

    app_b.set_request_handler(handler, inline=True)
    assert app_a.request(b"abc", "b") == b"cba"
    assert threads == ["nodosum-b-loop"]
    with pytest.raises(RemoteError, match="LoopThreadError"):
        app_a.request(b"block", "b")
    assert app_a.request(b"still fine", "b") == b"enif llits"


def test_node_is_unusable_in_a_forked_child_with_a_clear_error(cluster3):
    app = cluster3[0].register_application("fork")
    cluster3[1].register_application("fork").set_request_handler(lambda p, s: b"ok")
    assert app.request(b"x", "b") == b"ok"
    pid = os.fork()
    if pid == 0:  # the child: the loop thread was not copied
        code = 3
        try:
            app.request(b"x", "b", timeout=1)
            code = 1
        except NodeNotRunning as exc:
            code = 0 if "forked" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert app.request(b"x", "b") == b"ok"  # the parent's node is untouched


def test_peer_dying_mid_request_fails_the_caller_fast(make_cluster):
    a, b = make_cluster(["dm-a", "dm-b"])
    app_a = a.register_application("mid")
    entered = threading.Event()
    release = threading.Event()

    def stuck(payload: bytes, sender: str) -> bytes:
        entered.set()
        release.wait(20)
        return b"too late"

    b.register_application("mid").set_request_handler(stuck)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            app_a.request(b"x", "dm-b", timeout=15)
        except BaseException as exc:  # recorded and asserted below
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert entered.wait(10)
    start = time.monotonic()
    closer = threading.Thread(target=b.shutdown)
    closer.start()
    caller.join(10)
    release.set()
    closer.join(15)
    assert outcome and isinstance(outcome[0], NodeUnreachable)
    assert time.monotonic() - start < 5  # the connection close, not the 15 s timeout, ended the wait

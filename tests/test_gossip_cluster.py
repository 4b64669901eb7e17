"""Gossip membership on real sockets: join through seeds, failure, leave, impostors, garbage."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time

import pytest

from nodosum import ConfigError, Node, NodeConfig, NodeUnreachable, ReadyTimeout, RequestTimeout

from .conftest import connection_to, reap_child, spawn_child, wait_for

FAST = {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}


def gossip_node(ca, node_id: str, seeds=(), **settings) -> Node:
    settings.setdefault("swim", FAST)
    return Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id=node_id, port=0, profile="local",
                           seeds=list(seeds), **settings)).start()


def addr(node: Node) -> str:
    return "%s:%d" % node.address


@pytest.fixture
def started():
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.shutdown()


def views(nodes):
    return {n.node_id: n.member_ids() for n in nodes}


def test_five_nodes_each_given_one_seed_converge(ca, started):
    started.append(gossip_node(ca, "g0"))
    for i in range(1, 5):
        started.append(gossip_node(ca, f"g{i}", [addr(started[random.Random(i).randrange(i)])]))
    for node in started:
        node.ready(20)
    everyone = sorted(n.node_id for n in started)
    assert wait_for(lambda: all(ids == everyone for ids in views(started).values()), timeout=20), views(started)
    # members are connected over QUIC and can talk
    apps = [n.register_application("hello") for n in started]
    for app in apps:
        app.set_request_handler(lambda p, s: s.encode())
    assert apps[4].request(b"", "g0") == b"g4"
    # everyone ended on one gossip key
    assert wait_for(lambda: len({n.keyring.primary_key for n in started}) == 1, timeout=20)


def test_graceful_leave_is_reported_as_left(ca, started):
    started.extend([gossip_node(ca, "l0")])
    started.extend([gossip_node(ca, f"l{i}", [addr(started[0])]) for i in (1, 2)])
    for node in started:
        node.ready(20)
    assert wait_for(lambda: all(len(ids) == 3 for ids in views(started).values()), timeout=20)
    events = []
    started[0].on_member_event(events.append)
    leaving = started.pop()
    leaving.shutdown()
    assert wait_for(lambda: [(e.kind.value, e.member.node_id) for e in events] == [("leave", "l2")], timeout=10)
    assert wait_for(lambda: all(ids == ["l0", "l1"] for ids in views(started).values()), timeout=10)


def _spawn_child(ca, node_id: str, seeds: list[str], swim: dict,
                 port: int = 0, **spec) -> tuple[subprocess.Popen, tuple[str, int]]:
    child, address = spawn_child("node_child.py", {"ca": [ca[0].decode(), ca[1].decode()], "node_id": node_id,
                                                   "seeds": seeds, "swim": swim, "port": port, **spec})
    assert child.stdout.readline().strip() == "ready"
    return child, address


def test_killed_node_is_declared_failed_and_disconnected(ca, started):
    started.append(gossip_node(ca, "f0", swim={}))  # the local profile's own timings
    started.extend(gossip_node(ca, f"f{i}", [addr(started[0])], swim={}) for i in (1, 2, 3))
    child, _ = _spawn_child(ca, "f9", [addr(started[0])], {})
    try:
        assert wait_for(lambda: all(len(ids) == 5 for ids in views(started).values()), timeout=30)
        events = {n.node_id: [] for n in started}
        for node in started:
            node.on_member_event(lambda e, me=node.node_id: events[me].append((e.kind.value, e.member.node_id)))
        app = started[1].register_application("x")
        try:
            app.request(b"", "f9", timeout=2)  # opens a connection to f9
        except Exception as exc:  # f9 has no such application: RemoteError expected, and it proves the link
            assert "no application" in str(exc)
        os.kill(child.pid, signal.SIGKILL)
        start = time.monotonic()
        assert wait_for(lambda: all(("fail", "f9") in e for e in events.values()), timeout=60), events
        detection = time.monotonic() - start
        assert all("f9" not in ids for ids in views(started).values())
        # its QUIC connections were closed on the fail event
        for node in started:
            assert connection_to(node, "f9") is None
        assert detection < 60
    finally:
        reap_child(child)


def test_restart_with_same_id_rejoins(ca, started):
    started.append(gossip_node(ca, "r0"))
    started.append(gossip_node(ca, "r1", [addr(started[0])]))
    child, address = _spawn_child(ca, "r9", [addr(started[0])], FAST)
    try:
        assert wait_for(lambda: all("r9" in ids for ids in views(started).values()), timeout=20)
        os.kill(child.pid, signal.SIGKILL)
        reap_child(child)
        assert wait_for(lambda: all("r9" not in ids for ids in views(started).values()), timeout=30)
        child, _ = _spawn_child(ca, "r9", [addr(started[1])], FAST, port=address[1])  # same id and port
        assert wait_for(lambda: all("r9" in ids for ids in views(started).values()), timeout=20)
    finally:
        reap_child(child)


def test_node_killed_and_restarted_at_once_answers_again_within_seconds(ca, started):
    # SIGKILL leaves the QUIC connection to the dead process open here: its packets are dropped
    # and nothing closes it before the idle timeout (30 s below). The restarted node's new
    # connection must replace it as soon as the old one fails a liveness probe.
    started.append(gossip_node(ca, "q0", swim={}, idle_timeout=30.0))
    app = started[0].register_application("echo")
    child, address = _spawn_child(ca, "q9", [addr(started[0])], {}, echo=True)
    try:
        assert wait_for(lambda: "q9" in started[0].member_ids(), timeout=20)
        assert app.request(b"one", "q9", timeout=5) == b"one"
        os.kill(child.pid, signal.SIGKILL)
        reap_child(child)
        child, _ = _spawn_child(ca, "q9", [addr(started[0])], {}, port=address[1], echo=True)
        restarted = time.monotonic()

        def answered() -> bool:
            try:
                return app.request(b"two", "q9", timeout=1) == b"two"
            except (NodeUnreachable, RequestTimeout):
                return False

        assert wait_for(answered, timeout=40, interval=0.1)
        assert time.monotonic() - restarted < 10
    finally:
        reap_child(child)


def test_node_of_another_ca_never_appears(ca, other_ca, started):
    started.append(gossip_node(ca, "h0"))
    started.append(gossip_node(ca, "h1", [addr(started[0])]))
    rogue = gossip_node(other_ca, "rogue", [addr(started[0])])
    try:
        with pytest.raises(ReadyTimeout):
            rogue.ready(3)
        time.sleep(0.5)  # a window for anything it might have slipped in (none expected)
        assert all(ids == ["h0", "h1"] for ids in views(started).values())
        assert rogue.member_ids() == ["rogue"]
    finally:
        rogue.shutdown()


def test_node_with_wrong_gossip_key_never_appears(ca, started):
    key, wrong = os.urandom(32), os.urandom(32)
    started.append(gossip_node(ca, "k0", gossip_keys=[key]))
    started.append(gossip_node(ca, "k1", [addr(started[0])], gossip_keys=[key]))
    started[1].ready(10)
    intruder = gossip_node(ca, "intruder", [addr(started[0])], gossip_keys=[wrong])
    try:
        with pytest.raises(ReadyTimeout):
            intruder.ready(3)
        assert all(ids == ["k0", "k1"] for ids in views(started).values())
        assert started[0].stats().get("push_pull_refused_key", 0) >= 1
    finally:
        intruder.shutdown()


def test_garbage_packets_are_dropped_and_counted(ca, started):
    started.append(gossip_node(ca, "z0"))
    started.append(gossip_node(ca, "z1", [addr(started[0])]))
    started[1].ready(10)
    target = started[0]
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(10_000):
            data = bytearray(rng.randbytes(rng.choice([1, 13, 60, 300, 1400])))
            data[0] &= 0xBF  # 0x40 clear: it goes to the gossip layer, not QUIC
            sock.sendto(bytes(data), target.address)
            if i % 500 == 0:
                time.sleep(0.001)
    assert wait_for(lambda: target.stats().get("gossip_packets_dropped", 0) > 5_000, timeout=20)
    time.sleep(1.0)  # several probe rounds with the garbage behind us: membership must hold
    assert all(ids == ["z0", "z1"] for ids in views(started).values())


def test_join_retries_until_a_seed_answers(ca, started):
    # a dead seed first, and the live seed not started yet: the joiner keeps trying
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    joiner = gossip_node(ca, "j1", [dead, f"127.0.0.1:{port}"])
    started.append(joiner)
    with pytest.raises(ReadyTimeout):
        joiner.ready(1)
    started.append(Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id="j0", port=port, profile="local",
                                   swim=FAST)).start())
    joiner.ready(20)
    assert wait_for(lambda: all(ids == ["j0", "j1"] for ids in views(started).values()), timeout=20)


def test_metadata_updates_reach_every_member(ca, started):
    started.append(gossip_node(ca, "u0", meta={"zone": "a"}))
    started.append(gossip_node(ca, "u1", [addr(started[0])]))
    started[1].ready(10)
    assert wait_for(lambda: {m.node_id: m.meta for m in started[1].members()}.get("u0") == {"zone": "a"})
    events = []
    started[1].on_member_event(events.append)
    started[0].update_meta({"zone": "b", "weight": 2})
    assert wait_for(lambda: any(e.kind.value == "update" and e.member.meta == {"zone": "b", "weight": 2}
                                for e in events), timeout=10)
    with pytest.raises(ConfigError):
        started[0].update_meta({"big": "x" * 1000})


def test_gossip_key_rotation_while_running(ca, started):
    old, new = os.urandom(32), os.urandom(32)
    started.append(gossip_node(ca, "q0", gossip_keys=[old]))
    started.extend(gossip_node(ca, f"q{i}", [addr(started[0])], gossip_keys=[old]) for i in (1, 2))
    for node in started:
        node.ready(10)
    assert wait_for(lambda: all(len(ids) == 3 for ids in views(started).values()), timeout=20)
    for node in started:  # install, then switch, then retire the old key, as an operator would
        node.keyring.add(new)
    for node in started:
        node.keyring.use(new)
    time.sleep(0.3)  # let packets sealed with the old key drain, as an operator waits before retiring it
    for node in started:
        node.keyring.remove(old)
    failures_before = sum(n.stats().get("gossip_probe_failures", 0) for n in started)
    time.sleep(1.5)  # several probe rounds under the new key only (checking nothing fails meanwhile)
    assert all(len(ids) == 3 for ids in views(started).values())
    assert sum(n.stats().get("gossip_probe_failures", 0) for n in started) == failures_before

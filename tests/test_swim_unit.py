"""Unit tests of the SWIM parts: formulas, config, broadcast queue, and the core's mechanics."""

from __future__ import annotations

import math
import random

import pytest

from nodosum.errors import ConfigError
from nodosum.membership.awareness import Awareness
from nodosum.membership.base import Member, MemberEventKind
from nodosum.membership.broadcast import BroadcastQueue, retransmit_limit
from nodosum.membership.codec import (
    Alive,
    Compound,
    Dead,
    IndirectPing,
    Nack,
    NodeStatus,
    Ping,
    Suspect,
    add_label,
    decode,
    encode,
)
from nodosum.membership.config import SwimConfig
from nodosum.membership.keyring import Keyring
from nodosum.membership.suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout
from nodosum.membership.swim import Swim, push_pull_scale

# ---------------------------------------------------------------- formulas


@pytest.mark.parametrize(
    ("n", "scale"), [(1, 1.0), (5, 1.0), (10, 1.0), (50, 1.698), (100, 2.0), (500, 2.698), (1000, 3.0)]
)
def test_suspicion_timeout_uses_log10_of_n(n: int, scale: float) -> None:
    assert suspicion_timeout(3, n, 1.0) == pytest.approx(3 * scale)
    assert suspicion_timeout(4, n, 0.5) == pytest.approx(4 * scale * 0.5)


def test_suspicion_timeout_is_not_log_n_plus_one() -> None:
    # memberlist's comment says log(N+1); its code (ported here) uses max(1, log10(N)).
    assert suspicion_timeout(4, 9, 1.0) == 4.0
    assert suspicion_timeout(4, 20, 1.0) == pytest.approx(4 * 1.301)


def test_lan_suspicion_bounds_for_50_nodes() -> None:
    cfg = SwimConfig.profile("lan")
    low = suspicion_timeout(cfg.suspicion_mult, 50, cfg.probe_interval)
    assert low == pytest.approx(6.792)
    assert cfg.suspicion_max_timeout_mult * low == pytest.approx(40.752)


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "expected"),
    [(0, 3, 0.0, 30.0), (1, 3, 2.0, 14.0), (2, 3, 3.0, 4.81), (3, 3, 4.0, -2.0), (4, 3, 5.0, -3.0), (5, 3, 10.0, -8.0)],
)
def test_remaining_suspicion_time(n: int, k: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


def test_suspicion_starts_at_max_and_shrinks_with_independent_confirmations() -> None:
    s = Suspicion("accuser", k=3, min_timeout=0.5, max_timeout=2.0, start=100.0)
    assert s.deadline == 102.0
    assert not s.confirm("accuser", 100.0)  # the accuser is not a confirmation
    assert s.confirm("b", 100.0)
    first = s.deadline
    assert 100.5 < first < 102.0
    assert not s.confirm("b", 100.0)  # duplicates do not count
    assert s.confirm("c", 100.0)
    assert s.deadline < first
    assert s.confirm("d", 100.0)
    assert s.deadline == pytest.approx(100.5)  # k confirmations: the minimum
    assert not s.confirm("e", 100.0)  # no more once k is reached
    assert s.n == 3


def test_suspicion_confirmation_after_deadline_fires_now() -> None:
    s = Suspicion("a", k=3, min_timeout=2.0, max_timeout=30.0, start=0.0)
    assert s.confirm("b", 20.0)  # total timeout now 14 s, already passed
    assert s.deadline == 20.0


def test_suspicion_without_expected_confirmations_uses_min() -> None:
    s = Suspicion("a", k=0, min_timeout=4.0, max_timeout=24.0, start=1.0)
    assert s.deadline == 5.0
    assert not s.confirm("b", 2.0)


def test_awareness_scales_and_clamps() -> None:
    a = Awareness(8)
    assert a.scale(1.0) == 1.0
    a.apply_delta(3)
    assert a.score == 3 and a.scale(0.5) == 2.0
    a.apply_delta(100)
    assert a.score == 7 and a.scale(1.0) == 8.0  # max multiplier 8
    a.apply_delta(-100)
    assert a.score == 0


@pytest.mark.parametrize(
    ("mult", "n", "limit"), [(3, 0, 0), (3, 1, 3), (3, 99, 6), (4, 50, 8), (4, 100, 12), (2, 5, 2)]
)
def test_retransmit_limit(mult: int, n: int, limit: int) -> None:
    assert retransmit_limit(mult, n) == limit == mult * math.ceil(math.log10(n + 1))


def test_push_pull_scale() -> None:
    assert all(push_pull_scale(1.0, n) == 1.0 for n in range(33))
    assert all(push_pull_scale(1.0, n) == 2.0 for n in range(33, 65))
    assert all(push_pull_scale(1.0, n) == 3.0 for n in range(65, 129))


# ---------------------------------------------------------------- broadcast queue


def test_broadcast_queue_replaces_by_name_and_limits_transmits() -> None:
    q = BroadcastQueue(retransmit_mult=1)
    q.queue("a", b"old")
    q.queue("a", b"new")
    assert len(q) == 1
    assert q.get(2, 1000, num_nodes=9) == [b"new"]  # limit 1 * ceil(log10(10)) = 1
    assert len(q) == 0 and not q.pending("a")


def test_broadcast_queue_orders_fresh_and_large_first_within_budget() -> None:
    q = BroadcastQueue(retransmit_mult=3)
    q.queue("small", b"s" * 10)
    q.queue("big", b"b" * 100)
    assert q.get(2, 1000, 10) == [b"b" * 100, b"s" * 10]
    q.queue("fresh", b"f" * 5)
    assert q.get(2, 1000, 10)[0] == b"f" * 5  # never-sent messages first
    assert q.get(2, 50, 10) == [b"f" * 5, b"s" * 10]  # fewest transmits first; "big" does not fit


# ---------------------------------------------------------------- config


def test_profiles_match_memberlist() -> None:
    lan = SwimConfig.profile("lan")
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks) == (1.0, 0.5, 3)
    assert (lan.suspicion_mult, lan.suspicion_max_timeout_mult, lan.retransmit_mult) == (4, 6, 4)
    assert (lan.gossip_interval, lan.gossip_nodes, lan.gossip_to_the_dead_time) == (0.2, 3, 30.0)
    assert (lan.push_pull_interval, lan.awareness_max_multiplier, lan.max_packet_size) == (30.0, 8, 1400)
    assert lan == SwimConfig()
    local = SwimConfig.profile("local")
    assert (local.probe_interval, local.probe_timeout, local.indirect_checks) == (1.0, 0.2, 1)
    assert (local.suspicion_mult, local.retransmit_mult, local.gossip_interval) == (3, 2, 0.1)
    assert (local.push_pull_interval, local.gossip_to_the_dead_time) == (15.0, 15.0)


def test_profile_overrides() -> None:
    cfg = SwimConfig.profile("local", probe_interval=2, gossip_nodes=5)
    assert cfg.probe_interval == 2.0 and isinstance(cfg.probe_interval, float)
    assert cfg.gossip_nodes == 5 and cfg.suspicion_mult == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "wan"}, "profile"),
        ({"name": "lan", "probe_intervall": 1.0}, "probe_intervall"),
        ({"name": "lan", "probe_interval": 0}, "probe_interval"),
        ({"name": "lan", "probe_interval": float("nan")}, "probe_interval"),
        ({"name": "lan", "probe_timeout": 2.0}, "probe_timeout"),
        ({"name": "lan", "indirect_checks": -1}, "indirect_checks"),
        ({"name": "lan", "suspicion_mult": 2.5}, "suspicion_mult"),
        ({"name": "lan", "retransmit_mult": True}, "retransmit_mult"),
        ({"name": "lan", "max_packet_size": 500}, "max_packet_size"),
        ({"name": "lan", "gossip_interval": "fast"}, "gossip_interval"),
        ({"name": "lan", "greet_new_members": 1}, "greet_new_members"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ConfigError) as info:
        SwimConfig.profile(name, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# ---------------------------------------------------------------- the core, by hand

CFG = SwimConfig.profile("lan")


def make(node_id: str, port: int, *, meta: dict[str, object] | None = None, **kwargs: object) -> Swim:
    member = Member(node_id, "10.0.0.1", port, dict(meta or {}))
    return Swim(member, CFG, rng=random.Random(node_id), now=0.0, **kwargs)  # type: ignore[arg-type]


class Wire:
    """Instant delivery between Swim instances, with a set of nodes whose packets vanish."""

    def __init__(self, *swims: Swim) -> None:
        self.by_addr = {s.local.address: s for s in swims}
        self.down: set[str] = set()
        self.log: list[tuple[str, str, object]] = []

    def flush(self, now: float) -> None:
        for _ in range(100):
            moved = False
            for src in list(self.by_addr.values()):
                for packet, addr in src.outgoing():
                    dst = self.by_addr.get(addr)
                    msg = decode(packet) if src._keyring is None else None
                    self.log.append((src.local.node_id, dst.local.node_id if dst else "?", msg))
                    if dst is None or dst.local.node_id in self.down or src.local.node_id in self.down:
                        continue
                    dst.receive(packet, src.local.address, now)
                    moved = True
            if not moved:
                return

    def sent(self, kind: type, src: str | None = None) -> list[object]:
        found = []
        for s, _, msg in self.log:
            parts = msg.messages if isinstance(msg, Compound) else (msg,)
            found += [p for p in parts if isinstance(p, kind) and (src is None or s == src)]
        return found


def connect(*swims: Swim, now: float = 0.0) -> Wire:
    wire = Wire(*swims)
    for s in swims[1:]:
        blob = s.local_state(join=True)
        assert swims[0].merge_remote_state(blob, now) is True
        assert s.merge_remote_state(swims[0].local_state(), now) is False
    for s in swims[1:]:  # a second round: everyone now has the full view
        s.merge_remote_state(swims[0].local_state(), now)
    wire.flush(now)
    for s in swims:
        s.events()
    return wire


def run(wire: Wire, swims: list[Swim], start: float, end: float) -> float:
    """Tick every instance at its deadlines from ``start`` to ``end``; returns end."""
    now = start
    while now < end:
        live = [s for s in swims if s.local.node_id not in wire.down]
        deadlines = [d for s in live if (d := s.next_deadline()) is not None]
        now = min([end, *deadlines])
        now = max(now, start)
        for s in live:
            deadline = s.next_deadline()
            if deadline is not None and deadline <= now:
                s.tick(now)
        wire.flush(now)
        if now >= end:
            break
    return end


def test_join_by_push_pull_and_events() -> None:
    a, b = make("a", 1), make("b", 2, meta={"zone": "x"})
    b_state = b.local_state(join=True)
    assert a.merge_remote_state(b_state, 0.0)
    (event,) = a.events()
    assert event.kind == MemberEventKind.JOIN and event.member.node_id == "b"
    assert event.member.meta == {"zone": "x"} and event.member.address == ("10.0.0.1", 2)
    assert [m.node_id for m in a.members()] == ["a", "b"]
    assert a.is_member("b") and not a.is_member("c")


def test_probe_acked_keeps_health() -> None:
    a, b = make("a", 1), make("b", 2)
    wire = connect(a, b)
    run(wire, [a, b], 0.0, 5.0)
    assert a.stats["probes"] >= 3 and a.stats["probe_failures"] == 0
    assert a.health_score == 0 and a.status_of("b") == NodeStatus.ALIVE


def test_failed_probe_goes_indirect_gets_nack_and_suspects() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    wire = connect(a, b, c)
    wire.down.add("b")
    run(wire, [a, b, c], 0.0, 4.0)
    assert wire.sent(IndirectPing, "a"), "a should ask c to probe b"
    assert wire.sent(Nack, "c"), "c should nack when b does not answer"
    assert a.status_of("b") == NodeStatus.SUSPECT
    assert a.health_score == 0  # the nack came back: a's own health is fine


def test_missing_nacks_lower_local_health() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    wire = connect(a, b, c)
    wire.down.update({"b", "c"})
    run(wire, [a], 0.0, 2.5)
    assert a.health_score >= 1  # neither ack nor nack: maybe *we* are the problem


def test_suspect_refutes_with_higher_incarnation_to_sender_and_accuser() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    wire = connect(a, b, c)
    b.receive(encode(Suspect(b.incarnation, "b", "c")), a.local.address, 1.0)
    assert b.incarnation == 1 and b.stats["refutes"] == 1
    targets = {addr for _, addr in b.outgoing()}
    assert {a.local.address, c.local.address} <= targets
    # an accusation older than our incarnation only earns the sender our current alive
    b.receive(encode(Suspect(0, "b", "c")), a.local.address, 1.5)
    assert b.incarnation == 1 and b.stats["refutes"] == 1
    assert any(isinstance(p, Alive) for p in _parts(b.outgoing()))
    del wire


def _parts(out: list[tuple[bytes, tuple[str, int]]]) -> list[object]:
    parts: list[object] = []
    for packet, _ in out:
        msg = decode(packet)
        parts += msg.messages if isinstance(msg, Compound) else [msg]
    return parts


def test_suspect_times_out_to_fail_and_gossips_dead() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    wire = connect(a, b, c)
    wire.down.add("b")
    run(wire, [a, b, c], 0.0, 20.0)  # 3 nodes: k = 0, so the minimum timeout (4 s) applies
    for s in (a, c):
        assert s.status_of("b") == NodeStatus.DEAD
        assert [e.kind for e in s.events() if e.member.node_id == "b"] == [MemberEventKind.FAIL]
    assert wire.sent(Dead)


def test_graceful_leave_is_left_not_dead() -> None:
    a, b, c = make("a", 1), make("b", 2), make("c", 3)
    wire = connect(a, b, c)
    b.leave(1.0)
    assert b.has_left and not b.leave_complete
    run(wire, [a, b, c], 1.0, 6.0)
    assert b.leave_complete
    for s in (a, c):
        assert s.status_of("b") == NodeStatus.LEFT
        assert [e.kind for e in s.events() if e.member.node_id == "b"] == [MemberEventKind.LEAVE]
    assert "b" not in [m.node_id for m in a.members()]


def test_meta_update_and_limit() -> None:
    a, b = make("a", 1), make("b", 2)
    wire = connect(a, b)
    b.update_meta({"zone": "y", "weight": 3}, 1.0)
    run(wire, [a, b], 1.0, 3.0)
    updates = [e for e in a.events() if e.kind == MemberEventKind.UPDATE]
    assert updates and updates[-1].member.meta == {"zone": "y", "weight": 3}
    with pytest.raises(ConfigError) as info:
        b.update_meta({"big": "x" * 600}, 3.0)
    assert info.value.field == "meta"
    with pytest.raises(ConfigError):
        make("c", 3, meta={"big": "x" * 600})


def test_stale_alive_from_a_restarted_node_is_answered() -> None:
    a, b = make("a", 1), make("b", 2)
    connect(a, b)
    b.update_meta({"v": 1}, 0.5)  # incarnation 1
    a.receive(encode(Alive(1, "b", "10.0.0.1", 2, b'{"v":1}')), b.local.address, 0.6)
    a.outgoing()
    # b restarts: incarnation 0 again, and announces itself from its own address
    fresh = make("b", 2)
    a.receive(encode(Alive(0, "b", "10.0.0.1", 2, b"")), fresh.local.address, 1.0)
    out = a.outgoing()
    assert out and out[0][1] == fresh.local.address
    for packet, _ in out:
        fresh.receive(packet, a.local.address, 1.0)
    assert fresh.incarnation == 2  # outranks its former self


def test_dead_node_rejoin_by_refuting() -> None:
    a, b = make("a", 1), make("b", 2)
    connect(a, b)
    a.receive(encode(Dead(0, "b", "a")), ("10.0.0.9", 9), 1.0)
    assert a.status_of("b") == NodeStatus.DEAD
    a.events()
    a.outgoing()
    fresh = make("b", 2)
    fresh.join([a.local.address], 2.0)
    wire = Wire(a, fresh)
    wire.flush(2.0)
    assert a.status_of("b") == NodeStatus.ALIVE and fresh.incarnation >= 1
    assert [e.kind for e in a.events()] == [MemberEventKind.JOIN]


def test_packets_stay_under_max_packet_size() -> None:
    meta = {"k": "v" * 400}
    a = make("a", 1, meta=meta)
    peers = [make(f"peer-{i:03d}", 100 + i, meta=meta) for i in range(60)]
    for p in peers:
        a.merge_remote_state(p.local_state(), 0.0)
    out = a.outgoing()
    a.tick(a.next_deadline() or 0.0)
    out += a.outgoing()
    assert out and max(len(p) for p, _ in out) <= CFG.max_packet_size
    keyed = make("k", 5, meta=meta, keyring=Keyring([b"k" * 32]), label=b"prod")
    for p in peers:
        keyed.merge_remote_state(p.local_state(), 0.0)
    keyed.tick(keyed.next_deadline() or 0.0)
    assert max(len(p) for p, _ in keyed.outgoing()) <= CFG.max_packet_size


def test_plaintext_label_mismatch_is_dropped_and_counted() -> None:
    a = make("a", 1, label=b"blue")
    b = make("b", 2, label=b"green")
    before = a.member_states()
    ping = encode(Ping(1, "a", "b", "10.0.0.1", 2))
    a.receive(add_label(b"green", ping), b.local.address, 0.0)  # another cluster's label
    a.receive(ping, b.local.address, 0.0)  # no label at all
    assert a.stats["label_errors"] == 2 and a.dropped == 2
    assert a.member_states() == before and a.outgoing() == []
    a.receive(add_label(b"blue", ping), b.local.address, 0.0)
    assert a.outgoing()  # the right label: answered
    del b


def test_misdirected_ping_is_ignored() -> None:
    a = make("a", 1)
    a.receive(encode(Ping(5, "someone-else", "b", "10.0.0.1", 2)), ("10.0.0.1", 2), 0.0)
    assert a.outgoing() == [] and a.stats["misdirected_pings"] == 1


def test_next_deadline_and_drains() -> None:
    a = make("a", 1)
    deadline = a.next_deadline()
    assert deadline is not None and 0.0 <= deadline <= CFG.probe_interval
    a.tick(deadline)
    assert a.events() == [] and a.push_pull_requests() == []
    later = a.next_deadline()
    assert later is not None and later > deadline


def test_local_health_stretches_the_probe_interval_and_recovers() -> None:
    a = make("a", 1)
    peers = [make(f"p{i}", 10 + i) for i in range(10)]
    for p in peers:
        a.merge_remote_state(p.local_state(), 0.0)
    wire = connect(a)
    wire.down.update(p.local.node_id for p in peers)  # nobody answers, not even with a nack
    run(wire, [a], 0.0, 24.0)  # suspicion max is 25 s here: the peers stay suspect throughout
    assert a.health_score == CFG.awareness_max_multiplier - 1
    assert a.stats["probes"] <= 8  # 1 + 2 + ... seconds apart instead of one per second
    wire = Wire(a, *peers)
    for p in peers:
        p.merge_remote_state(a.local_state(), 24.0)
    run(wire, [a, *peers], 24.0, 60.0)
    assert a.health_score == 0  # acks bring it back
    assert a.num_members == 11


def test_periodic_push_pull_and_reconnect_requests() -> None:
    a, b = make("a", 1), make("b", 2)
    wire = connect(a, b)
    run(wire, [a, b], 0.0, CFG.push_pull_interval + 1)
    assert [m.node_id for m in a.push_pull_requests()] == ["b"]
    wire.down.add("b")
    run(wire, [a], CFG.push_pull_interval + 1, 3 * CFG.reconnect_interval)
    assert a.status_of("b") is None  # declared dead, then reaped...
    requests = [m.node_id for m in a.push_pull_requests()]
    assert requests and set(requests) == {"b"}  # ...but still retried, for when it comes back

"""Hostile input: garbage packets are dropped and counted; membership never changes, nothing raises."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodosum.membership.base import Member
from nodosum.membership.codec import (
    Ack,
    Alive,
    Compound,
    Dead,
    IndirectPing,
    MemberRecord,
    Nack,
    NodeStatus,
    Ping,
    PushPull,
    Suspect,
    add_label,
    encode,
)
from nodosum.membership.config import SwimConfig
from nodosum.membership.keyring import Keyring
from nodosum.membership.swim import Swim

GOOD_KEY, WRONG_KEY = b"g" * 32, b"w" * 32
LABEL = b"prod"
CFG = SwimConfig.profile("lan")


def cluster_member(keyring: Keyring | None, label: bytes = LABEL) -> Swim:
    """A node that knows four peers (one of them suspect), as in a running cluster."""
    swim = Swim(
        Member("target", "10.0.0.1", 7946, {"role": "cache"}), CFG, rng=random.Random(1), now=0.0,
        keyring=keyring, label=label,
    )  # fmt: skip
    records = tuple(
        MemberRecord(f"peer-{i}", "10.0.0.2", 7000 + i, 3, NodeStatus.ALIVE, b'{"i":%d}' % i) for i in range(4)
    )
    swim.merge_remote_state(encode(PushPull(False, records)), 0.0)
    swim.receive(_seal(keyring, encode(Suspect(3, "peer-2", "peer-1")), label), ("10.0.0.2", 7001), 0.0)
    swim.outgoing()
    swim.events()
    assert swim.status_of("peer-2") == NodeStatus.SUSPECT and swim.num_members == 5
    return swim


def _seal(keyring: Keyring | None, payload: bytes, label: bytes = LABEL) -> bytes:
    return keyring.encrypt(payload, label) if keyring else add_label(label, payload)


def snapshot(swim: Swim) -> list[tuple[object, ...]]:
    return [
        (s.member.node_id, s.member.address, s.member.meta, s.status, s.incarnation, s.since)
        for s in swim.member_states()
    ] + [swim.incarnation, swim.health_score]  # type: ignore[list-item]


def valid_messages() -> list[bytes]:
    """Messages that *would* change the target's state if accepted."""
    msgs = [
        Suspect(3, "peer-0", "peer-1"),
        Dead(3, "peer-1", "peer-3"),
        Dead(3, "peer-3", "peer-3"),
        Alive(9, "intruder", "10.6.6.6", 666, b""),
        Alive(9, "peer-0", "10.0.0.2", 7000, b'{"evil":1}'),
        Suspect(0, "target", "peer-1"),
        Dead(5, "target", "peer-1"),
        Ping(1, "target", "peer-0", "10.0.0.2", 7000),
        IndirectPing(2, "peer-1", "10.0.0.2", 7001, "peer-0", "10.0.0.2", 7000),
        Ack(3),
        Nack(4),
    ]
    encoded = [encode(m) for m in msgs]
    encoded.append(encode(Compound(tuple(msgs[:5]))))
    return encoded


def garbage(rng: random.Random, count: int) -> list[bytes]:
    good, wrong = Keyring([GOOD_KEY]), Keyring([WRONG_KEY])
    valid = valid_messages()
    packets: list[bytes] = []
    for i in range(count):
        kind = i % 6
        msg = rng.choice(valid)
        if kind == 0:  # random bytes, some starting like an encrypted packet
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            if packet and rng.random() < 0.5:
                packet = b"\x01" + packet[1:]
        elif kind == 1:  # a valid packet, truncated
            full = good.encrypt(msg, LABEL)
            packet = full[: rng.randrange(0, len(full))]
        elif kind == 2:  # valid, but encrypted with a key we do not hold
            packet = wrong.encrypt(msg, LABEL)
        elif kind == 3:  # valid key, another cluster's label
            packet = good.encrypt(msg, b"staging")
        elif kind == 4:  # valid plaintext, but this cluster encrypts
            packet = add_label(LABEL, msg)
        else:  # a valid packet with one bit flipped
            flipped = bytearray(good.encrypt(msg, LABEL))
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            packet = bytes(flipped)
        packets.append(packet)
    return packets


def test_ten_thousand_garbage_packets_leave_membership_intact() -> None:
    swim = cluster_member(Keyring([GOOD_KEY]))
    before = snapshot(swim)
    packets = garbage(random.Random(2024), 10_000)
    for n, packet in enumerate(packets):
        swim.receive(packet, ("10.6.6.6", 666), 1.0 + n * 1e-4)
    assert snapshot(swim) == before
    assert swim.events() == [] and swim.outgoing() == []
    stats = swim.stats
    assert stats["packets_received"] == 10_000 + 1
    assert swim.dropped == 10_000
    assert stats["handler_errors"] == 0
    # and it still works: a genuine packet is answered
    swim.receive(Keyring([GOOD_KEY]).encrypt(encode(Ping(7, "target", "peer-0", "10.0.0.2", 7000)), LABEL),
                 ("10.0.0.2", 7000), 2.0)  # fmt: skip
    assert len(swim.outgoing()) == 1


def test_plaintext_mode_garbage_is_dropped_too() -> None:
    swim = cluster_member(None)
    before = snapshot(swim)
    rng = random.Random(7)
    valid = [add_label(LABEL, m) for m in valid_messages()]
    for n in range(5_000):
        if n % 2:
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        else:
            full = rng.choice(valid)
            packet = full[: rng.randrange(0, len(full))]
        swim.receive(packet, ("10.6.6.6", 666), 1.0)
    assert snapshot(swim) == before
    assert swim.events() == [] and swim.outgoing() == []
    assert swim.dropped == 5_000 and swim.stats["handler_errors"] == 0


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.binary(max_size=1500))
def test_receive_never_raises(packet: bytes) -> None:
    for keyring in (None, Keyring([GOOD_KEY])):
        swim = cluster_member(keyring)
        swim.receive(packet, ("10.6.6.6", 666), 1.0)
        swim.receive(b"\x01" + packet, ("10.6.6.6", 666), 1.0)
        assert swim.stats["handler_errors"] == 0


def test_push_pull_garbage_raises_only_decode_error() -> None:
    from nodosum.membership.errors import GossipDecodeError

    swim = cluster_member(None)
    before = snapshot(swim)
    rng = random.Random(3)
    blob = swim.local_state()
    for n in range(2_000):
        data = blob[: rng.randrange(len(blob))] if n % 2 else bytes(rng.getrandbits(8) for _ in range(50))
        try:
            swim.merge_remote_state(data, 1.0)
        except GossipDecodeError:
            pass
    assert snapshot(swim) == before
    assert swim.stats["push_pull_errors"] == 2_000

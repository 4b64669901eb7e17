"""The gossip codec: round trips of every message, and garbage always gives GossipDecodeError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodosum.errors import NodosumError
from nodosum.membership import codec
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
    decode,
    encode,
)
from nodosum.membership.errors import GossipDecodeError

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _short_text(max_bytes: int = 255) -> st.SearchStrategy[str]:
    return st.text(max_size=60).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= max_bytes).filter(
        lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
    )


names = _short_text()
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ports = st.integers(0, 0xFFFF)
blobs = st.binary(max_size=600)

pings = st.builds(Ping, u32, names, names, names, ports)
indirect_pings = st.builds(IndirectPing, u32, names, names, ports, names, names, ports, st.booleans())
acks = st.builds(Ack, u32, blobs)
nacks = st.builds(Nack, u32)
suspects = st.builds(Suspect, u64, names, names)
alives = st.builds(Alive, u64, names, names, ports, blobs)
deads = st.builds(Dead, u64, names, names)
messages = st.one_of(pings, indirect_pings, acks, nacks, suspects, alives, deads)
compounds = st.builds(Compound, st.lists(messages, min_size=1, max_size=8).map(tuple))
records = st.builds(MemberRecord, names, names, ports, u64, st.sampled_from(list(NodeStatus)), blobs)
push_pulls = st.builds(PushPull, st.booleans(), st.lists(records, max_size=6).map(tuple))
packets = st.one_of(messages, compounds, push_pulls)

EXAMPLES = [
    Ping(7, "b", "a", "10.0.0.1", 7946),
    Ping(0, "", "a", "::1", 1),
    IndirectPing(9, "c", "10.0.0.3", 7946, "a", "10.0.0.1", 7946, nack=True),
    Ack(7),
    Ack(8, b"payload"),
    Nack(9),
    Suspect(3, "c", "a"),
    Alive(4, "nœud-é", "10.0.0.4", 7946, b'{"zone":"b"}'),
    Dead(5, "c", "a"),
    Dead(5, "c", "c"),
    Compound((Ping(1, "b", "a", "h", 1), Alive(1, "a", "h", 1))),
    PushPull(True, (MemberRecord("a", "h", 1, 2, NodeStatus.LEFT, b"{}"),)),
    PushPull(False, ()),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_examples(msg: codec.Packet) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert data[0] & 0x40 == 0  # never mistaken for QUIC on the shared port
    assert data[0] != 0x01  # nor for an encrypted packet


def test_left_is_a_dead_from_itself() -> None:
    assert Dead(1, "a", "a").is_left
    assert not Dead(1, "a", "b").is_left


@FUZZ
@given(packets)
def test_round_trip_every_message_type(msg: codec.Packet) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert data[0] & 0x40 == 0


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except GossipDecodeError as exc:
        assert isinstance(exc, NodosumError)


@FUZZ
@given(packets, st.data())
def test_truncations_raise_decode_error(msg: codec.Packet, data: st.DataObject) -> None:
    raw = encode(msg)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(GossipDecodeError):
        decode(raw[:cut])


@FUZZ
@given(packets, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_raise_decode_error(msg: codec.Packet, extra: bytes) -> None:
    with pytest.raises(GossipDecodeError):
        decode(encode(msg) + extra)


@FUZZ
@given(packets, st.data())
def test_bit_flips_never_raise_anything_else(msg: codec.Packet, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    try:
        decode(bytes(raw))
    except GossipDecodeError:
        pass


def test_specific_malformations() -> None:
    bad = [
        b"",
        b"\x00",
        b"\x40",
        bytes([codec.COMPOUND, 0]),  # empty compound
        bytes([codec.COMPOUND, 1, 0, 3]) + b"\x11\x00\x00",  # truncated inner ping
        codec.compound([codec.compound([encode(Nack(1))])]),  # nested compound
        bytes([codec.PUSH_PULL, 2, 0, 0, 0, 0]),  # bad join flag
        bytes([codec.PUSH_PULL, 0, 0xFF, 0xFF, 0xFF, 0xFF]),  # absurd member count
        encode(IndirectPing(1, "a", "h", 1, "b", "h", 1))[:-1] + b"\x07",  # bad nack flag
        bytes([codec.SUSPECT]) + b"\x00" * 8 + b"\x02\xff\xfe" + b"\x00",  # invalid UTF-8
    ]
    record = encode(PushPull(False, (MemberRecord("a", "h", 1, 1, NodeStatus.ALIVE),)))
    status_at = len(record) - 3
    bad.append(record[:status_at] + b"\x09" + record[status_at + 1 :])  # unknown status
    for data in bad:
        with pytest.raises(GossipDecodeError):
            decode(data)


def test_encoder_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        encode(Ping(2**32, "a", "b", "h", 1))
    with pytest.raises(ValueError):
        encode(Alive(1, "x" * 256, "h", 1))
    with pytest.raises(ValueError):
        encode(Alive(-1, "a", "h", 1))
    with pytest.raises(ValueError):
        codec.compound([])


def test_label_prefix() -> None:
    payload = encode(Nack(3))
    framed = codec.add_label(b"prod", payload)
    assert framed[0] & 0x40 == 0
    assert codec.strip_label(b"prod", framed) == payload
    with pytest.raises(GossipDecodeError):
        codec.strip_label(b"staging", framed)
    with pytest.raises(GossipDecodeError):
        codec.strip_label(b"prod", payload)
    with pytest.raises(GossipDecodeError):
        codec.strip_label(b"", framed)
    assert codec.strip_label(b"", payload) == payload

"""Binary codec of gossip messages (struct, big-endian; never pickle).

Every message starts with a type byte in 0x11..0x1F: its 0x40 bit is clear, so
an unencrypted gossip packet is never mistaken for QUIC (RFC 9443), and it
differs from the keyring's version byte 0x01. Strings are UTF-8 with a one-byte
length, blobs have a two-byte length, incarnations are 64-bit, sequence numbers
32-bit. Decoding is strict (no trailing bytes) and raises only
:class:`GossipDecodeError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

from .errors import GossipDecodeError

PING = 0x11
INDIRECT_PING = 0x12
ACK = 0x13
NACK = 0x14
SUSPECT = 0x15
ALIVE = 0x16
DEAD = 0x17
COMPOUND = 0x18
PUSH_PULL = 0x19
LABEL = 0x1F

#: Bytes a compound message adds: a header, then a length per part.
COMPOUND_HEADER_OVERHEAD = 2
COMPOUND_PART_OVERHEAD = 2
MAX_COMPOUND_PARTS = 255

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class NodeStatus(enum.IntEnum):
    """What one node believes about a member."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str  # "" = whoever listens at the address (a join ping)
    source: str
    source_host: str
    source_port: int


@dataclass(frozen=True, slots=True)
class IndirectPing:
    seq: int
    target: str
    target_host: str
    target_port: int
    source: str
    source_host: str
    source_port: int
    nack: bool = True


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    from_node: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    host: str
    port: int
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class Dead:
    """A node is dead; when ``from_node == node`` it left gracefully."""

    incarnation: int
    node: str
    from_node: str

    @property
    def is_left(self) -> bool:
        return self.node == self.from_node


@dataclass(frozen=True, slots=True)
class Compound:
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One entry of a push-pull state exchange."""

    node: str
    host: str
    port: int
    incarnation: int
    status: NodeStatus
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class PushPull:
    join: bool
    members: tuple[MemberRecord, ...]


Message = Union[Ping, IndirectPing, Ack, Nack, Suspect, Alive, Dead]
Packet = Union[Message, Compound, PushPull]


# --------------------------------------------------------------------- encoding
def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"string too long for the gossip codec ({len(raw)} bytes > 255)")
    return _U8.pack(len(raw)) + raw


def _blob(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"blob too long for the gossip codec ({len(value)} bytes)")
    return _U16.pack(len(value)) + bytes(value)


def encode(msg: Packet) -> bytes:
    """Encode one message (or a compound / push-pull) to bytes; ValueError on out-of-range fields."""
    try:
        return _encode(msg)
    except struct.error as exc:
        raise ValueError(f"field out of range in {type(msg).__name__}: {exc}") from None


def _encode(msg: Packet) -> bytes:
    if isinstance(msg, Ping):
        return b"".join(
            (bytes((PING,)), _U32.pack(msg.seq), _str(msg.target), _str(msg.source), _str(msg.source_host),
             _U16.pack(msg.source_port))
        )
    if isinstance(msg, IndirectPing):
        return b"".join(
            (bytes((INDIRECT_PING,)), _U32.pack(msg.seq), _str(msg.target), _str(msg.target_host),
             _U16.pack(msg.target_port), _str(msg.source), _str(msg.source_host), _U16.pack(msg.source_port),
             bytes((1 if msg.nack else 0,)))
        )
    if isinstance(msg, Ack):
        return bytes((ACK,)) + _U32.pack(msg.seq) + _blob(msg.payload)
    if isinstance(msg, Nack):
        return bytes((NACK,)) + _U32.pack(msg.seq)
    if isinstance(msg, Suspect):
        return bytes((SUSPECT,)) + _U64.pack(msg.incarnation) + _str(msg.node) + _str(msg.from_node)
    if isinstance(msg, Alive):
        return b"".join(
            (bytes((ALIVE,)), _U64.pack(msg.incarnation), _str(msg.node), _str(msg.host), _U16.pack(msg.port),
             _blob(msg.meta))
        )
    if isinstance(msg, Dead):
        return bytes((DEAD,)) + _U64.pack(msg.incarnation) + _str(msg.node) + _str(msg.from_node)
    if isinstance(msg, Compound):
        return compound([_encode(m) for m in msg.messages])
    if isinstance(msg, PushPull):
        parts = [bytes((PUSH_PULL, 1 if msg.join else 0)), _U32.pack(len(msg.members))]
        for rec in msg.members:
            parts.append(
                _str(rec.node) + _str(rec.host) + _U16.pack(rec.port) + _U64.pack(rec.incarnation)
                + bytes((int(NodeStatus(rec.status)),)) + _blob(rec.meta)
            )
        return b"".join(parts)
    raise TypeError(f"not a gossip message: {type(msg).__name__}")


def compound(parts: list[bytes]) -> bytes:
    """A compound packet from already encoded messages (1 to 255 of them)."""
    if not 1 <= len(parts) <= MAX_COMPOUND_PARTS:
        raise ValueError(f"a compound message holds 1 to {MAX_COMPOUND_PARTS} parts, not {len(parts)}")
    header = bytes((COMPOUND, len(parts))) + b"".join(_U16.pack(len(p)) for p in parts)
    return header + b"".join(parts)


def add_label(label: bytes, payload: bytes) -> bytes:
    """Prefix an unencrypted packet with the cluster label (no-op for an empty label)."""
    if not label:
        return payload
    if len(label) > 255:
        raise ValueError("a cluster label is at most 255 bytes")
    return bytes((LABEL, len(label))) + label + payload


def strip_label(label: bytes, packet: bytes) -> bytes:
    """Check and remove the label prefix of an unencrypted packet; GossipDecodeError on mismatch."""
    has_label = len(packet) > 0 and packet[0] == LABEL
    if not label:
        if has_label:
            raise GossipDecodeError("packet carries a cluster label, none expected")
        return packet
    if not has_label or len(packet) < 2:
        raise GossipDecodeError("packet carries no cluster label")
    size = packet[1]
    if bytes(packet[2 : 2 + size]) != label:
        raise GossipDecodeError("cluster label mismatch")
    return packet[2 + size :]


def label_overhead(label: bytes) -> int:
    return 2 + len(label) if label else 0


# --------------------------------------------------------------------- decoding
class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # Out-of-range reads raise IndexError / struct.error, which decode() turns into
    # GossipDecodeError; only raw() must check explicitly (slices never fail).
    def u8(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        (value,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise GossipDecodeError(f"truncated message (need {size} bytes at offset {self.pos})")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def text(self) -> str:
        raw = self.raw(self.u8())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GossipDecodeError("string is not valid UTF-8") from None

    def blob(self) -> bytes:
        return self.raw(self.u16())

    def flag(self) -> bool:
        value = self.u8()
        if value > 1:
            raise GossipDecodeError(f"invalid flag byte {value}")
        return bool(value)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise GossipDecodeError(f"{len(self.data) - self.pos} trailing bytes after message")


def decode(data: bytes) -> Packet:
    """Decode a packet's plaintext; raises :class:`GossipDecodeError` and nothing else."""
    try:
        data = bytes(data)
        if not data:
            raise GossipDecodeError("empty packet")
        if data[0] == COMPOUND:
            return _decode_compound(data)
        if data[0] == PUSH_PULL:
            return _decode_push_pull(data)
        return _decode_message(data)
    except GossipDecodeError:
        raise
    except Exception as exc:  # belt and braces: the contract is one exception type
        raise GossipDecodeError(f"malformed gossip message: {exc}") from None


def _decode_message(data: bytes) -> Message:
    r = _Reader(data)
    kind = r.u8()
    msg: Message
    if kind == PING:
        msg = Ping(r.u32(), r.text(), r.text(), r.text(), r.u16())
    elif kind == INDIRECT_PING:
        msg = IndirectPing(r.u32(), r.text(), r.text(), r.u16(), r.text(), r.text(), r.u16(), r.flag())
    elif kind == ACK:
        msg = Ack(r.u32(), r.blob())
    elif kind == NACK:
        msg = Nack(r.u32())
    elif kind == SUSPECT:
        msg = Suspect(r.u64(), r.text(), r.text())
    elif kind == ALIVE:
        msg = Alive(r.u64(), r.text(), r.text(), r.u16(), r.blob())
    elif kind == DEAD:
        msg = Dead(r.u64(), r.text(), r.text())
    else:
        raise GossipDecodeError(f"unknown gossip message type 0x{kind:02x}")
    r.end()
    return msg


def _decode_compound(data: bytes) -> Compound:
    r = _Reader(data)
    r.u8()
    count = r.u8()
    if count == 0:
        raise GossipDecodeError("empty compound message")
    lengths = [r.u16() for _ in range(count)]
    messages = []
    for size in lengths:
        part = r.raw(size)
        if part[:1] in (bytes((COMPOUND,)), bytes((PUSH_PULL,))):
            raise GossipDecodeError("nested compound or push-pull message")
        messages.append(_decode_message(part))
    r.end()
    return Compound(tuple(messages))


def _decode_push_pull(data: bytes) -> PushPull:
    r = _Reader(data)
    r.u8()
    join = r.flag()
    count = r.u32()
    # Each record takes at least 15 bytes: refuse absurd counts before looping.
    if count * 15 > len(data):
        raise GossipDecodeError(f"push-pull claims {count} members in {len(data)} bytes")
    records = []
    for _ in range(count):
        node, host, port, inc, status = r.text(), r.text(), r.u16(), r.u64(), r.u8()
        if status > NodeStatus.LEFT:
            raise GossipDecodeError(f"unknown member status {status}")
        records.append(MemberRecord(node, host, port, inc, NodeStatus(status), r.blob()))
    r.end()
    return PushPull(join, tuple(records))

"""The push-pull exchange carried over QUIC: a membership state plus, optionally, the keyring.

Wire format: u8 version (1), u8 flags (bit 0: join), u8 key count, then each key as
u8 length + bytes, then the SWIM state blob (the rest). Keys travel only over the
mutually authenticated QUIC connection, never in gossip packets.
"""

from __future__ import annotations

import struct

from .errors import GossipDecodeError

EXCHANGE_VERSION = 1
FLAG_JOIN = 0x01
MAX_KEYS = 32
_HEAD = struct.Struct("!BBB")


def encode_exchange(state: bytes, keys: list[bytes], join: bool) -> bytes:
    """One side of a push-pull: ``state`` from Swim.local_state, ``keys`` to share (may be empty)."""
    if len(keys) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys travel in an exchange")
    parts = [_HEAD.pack(EXCHANGE_VERSION, FLAG_JOIN if join else 0, len(keys))]
    for key in keys:
        if not 0 < len(key) < 256:
            raise ValueError("a key must be 1-255 bytes")
        parts.append(bytes((len(key),)) + key)
    parts.append(state)
    return b"".join(parts)


def decode_exchange(data: bytes) -> tuple[bytes, list[bytes], bool]:
    """(state, keys, join) from an exchange; GossipDecodeError if malformed."""
    if len(data) < _HEAD.size:
        raise GossipDecodeError("exchange too short")
    version, flags, count = _HEAD.unpack_from(data)
    if version != EXCHANGE_VERSION:
        raise GossipDecodeError(f"unsupported exchange version {version}")
    if flags & ~FLAG_JOIN:
        raise GossipDecodeError(f"unknown exchange flags {flags:#x}")
    if count > MAX_KEYS:
        raise GossipDecodeError(f"{count} keys is more than {MAX_KEYS}")
    offset = _HEAD.size
    keys = []
    for _ in range(count):
        if offset >= len(data):
            raise GossipDecodeError("exchange truncated inside its keys")
        size = data[offset]
        end = offset + 1 + size
        if size == 0 or end > len(data):
            raise GossipDecodeError("bad key length in exchange")
        keys.append(bytes(data[offset + 1:end]))
        offset = end
    return bytes(data[offset:]), keys, bool(flags & FLAG_JOIN)

"""Keyring: AES-GCM gossip encryption with rotation, labels and the QUIC-safe first byte."""

from __future__ import annotations

import threading

import pytest

from nodosum.errors import NodosumError
from nodosum.membership.errors import GossipDecryptError, KeyringError
from nodosum.membership.keyring import ENCRYPT_OVERHEAD, Keyring

K1, K2, K3 = b"1" * 16, b"2" * 24, b"3" * 32


def test_generate_makes_random_aes256_keys() -> None:
    a, b = Keyring.generate(), Keyring.generate()
    assert len(a) == 32 and a != b


@pytest.mark.parametrize("key", [K1, K2, K3])
def test_round_trip_all_key_sizes(key: bytes) -> None:
    ring = Keyring([key])
    packet = ring.encrypt(b"hello")
    assert len(packet) == len(b"hello") + ENCRYPT_OVERHEAD
    assert ring.decrypt(packet) == b"hello"


def test_first_byte_has_quic_bit_clear() -> None:
    ring = Keyring([K3])
    for size in (0, 1, 100, 1300):
        packet = ring.encrypt(b"x" * size, b"label")
        assert packet[0] & 0x40 == 0
        assert packet[0] == 0x01


def test_nonces_differ() -> None:
    ring = Keyring([K1])
    assert ring.encrypt(b"same") != ring.encrypt(b"same")


def test_wrong_key_fails() -> None:
    packet = Keyring([K1]).encrypt(b"secret")
    with pytest.raises(GossipDecryptError) as info:
        Keyring([K2]).decrypt(packet)
    assert isinstance(info.value, NodosumError)


def test_label_is_authenticated() -> None:
    ring = Keyring([K1])
    packet = ring.encrypt(b"secret", b"cluster-a")
    assert ring.decrypt(packet, b"cluster-a") == b"secret"
    with pytest.raises(GossipDecryptError):
        ring.decrypt(packet, b"cluster-b")
    with pytest.raises(GossipDecryptError):
        ring.decrypt(packet)


@pytest.mark.parametrize("packet", [b"", b"\x01", b"\x01" + b"\x00" * 28, b"\x02" + b"\x00" * 40, b"\x41" * 50])
def test_short_or_unknown_version_fails_cleanly(packet: bytes) -> None:
    with pytest.raises(GossipDecryptError):
        Keyring([K1]).decrypt(packet)


def test_tampering_fails() -> None:
    ring = Keyring([K1])
    packet = bytearray(ring.encrypt(b"secret payload"))
    packet[20] ^= 1
    with pytest.raises(GossipDecryptError):
        ring.decrypt(bytes(packet))


def test_rotation_add_use_remove() -> None:
    """The documented rotation: add the new key everywhere, switch to it, remove the old one."""
    a, b = Keyring([K1]), Keyring([K1])
    old_packet = a.encrypt(b"old")
    a.add(K3)
    b.add(K3)
    assert a.primary_key == K1 and a.keys == [K1, K3]
    a.use(K3)
    assert a.primary_key == K3 and a.keys == [K3, K1]
    assert b.decrypt(a.encrypt(b"new")) == b"new"  # b still sends with K1 but accepts K3
    assert a.decrypt(b.encrypt(b"from b")) == b"from b"
    b.use(K3)
    a.remove(K1)
    b.remove(K1)
    assert a.keys == [K3]
    with pytest.raises(GossipDecryptError):
        a.decrypt(old_packet)


def test_add_is_idempotent_and_validates() -> None:
    ring = Keyring([K1])
    ring.add(K1)
    assert ring.keys == [K1]
    for bad in (b"", b"x" * 15, b"x" * 33, "not bytes"):
        with pytest.raises(KeyringError):
            ring.add(bad)  # type: ignore[arg-type]


def test_cannot_remove_primary_or_use_unknown() -> None:
    ring = Keyring([K1, K2])
    with pytest.raises(KeyringError):
        ring.remove(K1)
    with pytest.raises(KeyringError):
        ring.use(K3)
    ring.remove(K3)  # unknown: ignored
    assert ring.keys == [K1, K2]


def test_constructor() -> None:
    assert Keyring([K1, K2], primary=K2).keys == [K2, K1]
    assert Keyring([], primary=K3).keys == [K3]
    assert Keyring([K1, K1]).keys == [K1]
    with pytest.raises(KeyringError):
        Keyring([])
    with pytest.raises(KeyringError):
        Keyring([b"short"])


def test_merge_is_a_deterministic_union() -> None:
    ring = Keyring([K2])
    added = ring.merge([K3, K1, K2])
    assert added == sorted([K1, K3])
    assert ring.primary_key == K2
    assert ring.keys == [K2, K1, K3]
    other = Keyring([K2])
    other.merge([K1, K3])
    assert other.keys == ring.keys  # same result whatever the order given
    ring.merge([], primary=K3)
    assert ring.primary_key == K3


def test_thread_safety_under_rotation() -> None:
    ring = Keyring([K1, K2, K3])
    errors: list[BaseException] = []
    stop = threading.Event()

    def rotate() -> None:
        try:
            while not stop.is_set():
                for key in (K2, K3, K1):
                    ring.use(key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=rotate, name="keyring-rotate")
    thread.start()
    try:
        for _ in range(2000):
            assert ring.decrypt(ring.encrypt(b"payload")) == b"payload"
    finally:
        stop.set()
        thread.join()
    assert not errors

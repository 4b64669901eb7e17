"""Keyring: AES-GCM encryption of gossip packets with rotatable keys.

Packet layout: ``0x01`` (version; its 0x40 bit is clear, so gossip is never
mistaken for QUIC on the shared UDP port, RFC 9443), a 12-byte random nonce,
then ciphertext and 16-byte tag. The cluster label, if any, is the AES-GCM
associated data: a packet from another cluster fails authentication.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import GossipDecryptError, KeyringError

logger = logging.getLogger(__name__)

ENCRYPTION_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
#: Bytes an encrypted packet adds to its plaintext.
ENCRYPT_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
KEY_SIZES = (16, 24, 32)


def validate_key(key: bytes) -> bytes:
    """Return ``key`` as bytes if it is 16, 24 or 32 bytes long (AES-128/192/256)."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise KeyringError(f"a gossip key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) not in KEY_SIZES:
        raise KeyringError(f"a gossip key must be 16, 24 or 32 bytes, not {len(key)}")
    return key


class Keyring:
    """Gossip keys: the primary encrypts, every key is tried to decrypt. Thread-safe."""

    def __init__(self, keys: Iterable[bytes], primary: bytes | None = None) -> None:
        ordered = [validate_key(k) for k in keys]
        if primary is not None:
            primary = validate_key(primary)
        elif ordered:
            primary = ordered[0]
        else:
            raise KeyringError("a keyring needs at least one key")
        self._lock = threading.Lock()
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in [primary, *ordered]:
            self._add_locked(key)

    @staticmethod
    def generate() -> bytes:
        """A new random 32-byte (AES-256) key."""
        return os.urandom(32)

    @property
    def primary_key(self) -> bytes:
        with self._lock:
            return self._keys[0]

    @property
    def keys(self) -> list[bytes]:
        """All keys, the primary first."""
        with self._lock:
            return list(self._keys)

    def add(self, key: bytes) -> None:
        """Install ``key`` for decryption (no-op if present); the primary is unchanged."""
        key = validate_key(key)
        with self._lock:
            self._add_locked(key)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary (the one used to encrypt)."""
        key = validate_key(key)
        with self._lock:
            if key not in self._ciphers:
                raise KeyringError("cannot use a key that is not in the keyring")
            self._keys.remove(key)
            self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Uninstall ``key``; the primary key cannot be removed. Unknown keys are ignored."""
        key = validate_key(key)
        with self._lock:
            if key == self._keys[0]:
                raise KeyringError("cannot remove the primary key; use() another key first")
            if key in self._ciphers:
                self._keys.remove(key)
                del self._ciphers[key]

    def merge(self, other_keys: Iterable[bytes], primary: bytes | None = None) -> list[bytes]:
        """Install every key of another keyring; returns the keys added (sorted, so deterministic).

        The primary stays this keyring's unless ``primary`` names one (of either side).
        """
        incoming = sorted({validate_key(k) for k in other_keys})
        with self._lock:
            added = [k for k in incoming if k not in self._ciphers]
            for key in added:
                self._add_locked(key)
        if primary is not None:
            self.add(primary)
            self.use(primary)
        return added

    def encrypt(self, plaintext: bytes, label: bytes = b"") -> bytes:
        """Encrypt with the primary key: version byte, nonce, ciphertext and tag."""
        with self._lock:
            cipher = self._ciphers[self._keys[0]]
        nonce = os.urandom(NONCE_SIZE)
        return bytes((ENCRYPTION_VERSION,)) + nonce + cipher.encrypt(nonce, plaintext, label or None)

    def decrypt(self, packet: bytes, label: bytes = b"") -> bytes:
        """Decrypt with whichever key works; :class:`GossipDecryptError` if none does."""
        if len(packet) < ENCRYPT_OVERHEAD:
            raise GossipDecryptError(f"packet too short to decrypt ({len(packet)} bytes)")
        if packet[0] != ENCRYPTION_VERSION:
            raise GossipDecryptError(f"unsupported encryption version {packet[0]}")
        nonce = bytes(packet[1 : 1 + NONCE_SIZE])
        body = bytes(packet[1 + NONCE_SIZE :])
        with self._lock:
            ciphers = [self._ciphers[k] for k in self._keys]
        for cipher in ciphers:
            try:
                return cipher.decrypt(nonce, body, label or None)
            except InvalidTag:
                continue
        raise GossipDecryptError("no installed key could decrypt the packet (or the cluster label differs)")

    def _add_locked(self, key: bytes) -> None:
        if key not in self._ciphers:
            self._ciphers[key] = AESGCM(key)
            self._keys.append(key)

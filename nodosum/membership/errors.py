"""Errors of the gossip layer (all under :class:`nodosum.errors.NodosumError`)."""

from __future__ import annotations

from ..errors import NodosumError


class GossipDecodeError(NodosumError, ValueError):
    """Bytes do not form a valid gossip message (truncated, unknown type, bad field)."""


class GossipDecryptError(NodosumError, ValueError):
    """A gossip packet could not be decrypted with any key of the keyring (or its label differs)."""


class KeyringError(NodosumError, ValueError):
    """A keyring operation was refused (bad key size, unknown key, removing the primary key)."""

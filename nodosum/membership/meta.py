"""Member metadata: a small JSON object, encoded compactly with sorted keys."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError

MAX_META_SIZE = 512


def encode_meta(meta: dict[str, Any] | None, limit: int = MAX_META_SIZE) -> bytes:
    """Encode user metadata; :class:`ConfigError` (field ``meta``) if not a JSON dict or too large."""
    if not meta:
        return b""
    if not isinstance(meta, dict):
        raise ConfigError("meta", f"must be a dict, not {type(meta).__name__}")
    try:
        raw = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError("meta", f"is not JSON-serialisable: {exc}") from None
    if len(raw) > limit:
        raise ConfigError("meta", f"encodes to {len(raw)} bytes, more than the {limit}-byte limit")
    return raw


def decode_meta(raw: bytes, limit: int = MAX_META_SIZE) -> dict[str, Any]:
    """Decode metadata received from a peer; ValueError if it is not a JSON object within the limit."""
    if not raw:
        return {}
    if len(raw) > limit:
        raise ValueError(f"metadata of {len(raw)} bytes exceeds the {limit}-byte limit")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("metadata is not a JSON object")
    return value

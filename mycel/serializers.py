"""Value serializers: pickle (the default), JSON and raw bytes.

Every failure, either way, raises :class:`~mycel.errors.SerializationError`.
Pickle is trusted because only CA-authenticated peers can send values (as
Django's own cache backends trust their servers).
"""

from __future__ import annotations

import datetime
import decimal
import json
import pickle
import uuid
import zoneinfo
from typing import Protocol, runtime_checkable

from mycel.errors import SerializationError

__all__ = [
    "BytesSerializer",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "get_serializer",
    "is_immutable",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back."""

    name: str

    def dumps(self, value: object) -> bytes: ...

    def loads(self, data: bytes) -> object: ...


class PickleSerializer:
    """Any picklable value, at ``pickle.HIGHEST_PROTOCOL``."""

    name = "pickle"

    def dumps(self, value: object) -> bytes:
        try:
            return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # PicklingError, TypeError, AttributeError, RecursionError...
            raise SerializationError(f"cannot pickle {type(value).__name__}: {exc}") from exc

    def loads(self, data: bytes) -> object:
        try:
            return pickle.loads(data)
        except Exception as exc:  # UnpicklingError, EOFError, AttributeError, ImportError...
            raise SerializationError(f"cannot unpickle value: {exc}") from exc

    def __repr__(self) -> str:
        return "PickleSerializer()"


class JsonSerializer:
    """JSON values, compact UTF-8. Tuples come back as lists; NaN and infinities are refused."""

    name = "json"

    def dumps(self, value: object) -> bytes:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"cannot encode {type(value).__name__} as JSON: {exc}") from exc

    def loads(self, data: bytes) -> object:
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except (TypeError, ValueError, RecursionError) as exc:  # incl. JSONDecodeError, UnicodeDecodeError
            raise SerializationError(f"cannot decode JSON value: {exc}") from exc

    def __repr__(self) -> str:
        return "JsonSerializer()"


class BytesSerializer:
    """Raw bytes only: ``bytes``, ``bytearray`` or ``memoryview`` in, ``bytes`` out."""

    name = "bytes"

    def dumps(self, value: object) -> bytes:
        if type(value) is bytes:
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise SerializationError(
            f"the bytes serializer stores bytes, bytearray or memoryview, not {type(value).__name__}"
        )

    def loads(self, data: bytes) -> object:
        return data if type(data) is bytes else bytes(data)

    def __repr__(self) -> str:
        return "BytesSerializer()"


_BY_NAME: dict[str, Serializer] = {
    "pickle": PickleSerializer(),
    "json": JsonSerializer(),
    "bytes": BytesSerializer(),
}


def get_serializer(spec: str | Serializer) -> Serializer:
    """A serializer by name (``"pickle"``, ``"json"``, ``"bytes"``), or ``spec`` itself if it has dumps/loads.

    A class with dumps/loads is instantiated. Unknown names raise ValueError.
    """
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec.lower()]
        except KeyError:
            raise ValueError(
                f"unknown serializer {spec!r}; expected one of {sorted(_BY_NAME)} "
                "or an object with dumps() and loads()"
            ) from None
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        if isinstance(spec, type):
            return spec()  # type: ignore[no-any-return]
        return spec
    raise TypeError(
        f"serializer must be a name or an object with dumps() and loads(), not {type(spec).__name__}"
    )


_ATOMIC = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        decimal.Decimal,
        datetime.date,
        datetime.timedelta,
        datetime.timezone,
        uuid.UUID,
    }
)
_CONTAINERS = frozenset({tuple, frozenset})
_WITH_TZINFO = frozenset({datetime.datetime, datetime.time})
_TZINFO = frozenset({type(None), datetime.timezone, zoneinfo.ZoneInfo})


def _atomic(value: object, t: type) -> bool:
    if t in _ATOMIC:
        return True
    # datetime and time are immutable, but may point to a tzinfo of any class.
    return t in _WITH_TZINFO and type(value.tzinfo) in _TZINFO  # type: ignore[attr-defined]


def is_immutable(value: object) -> bool:
    """True if ``value`` can never change: None, bool, numbers, str, bytes (and date/time,
    Decimal, UUID), and tuples and frozensets made only of those, at any depth.

    Types are matched exactly: a subclass may add mutable attributes.
    """
    containers = _CONTAINERS
    t = type(value)
    if t not in containers:
        return _atomic(value, t)
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        for item in pop():  # type: ignore[attr-defined]
            t = type(item)
            if t in containers:
                push(item)
            elif not _atomic(item, t):
                return False
    return True

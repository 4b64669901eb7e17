"""The exceptions mycel raises: one hierarchy under :class:`MycelError`.

Each error with attributes also keeps them through ``pickle`` (``__reduce__``), so
an error can cross a process boundary intact.

Every error says whether the failed operation may still have been applied
(:attr:`MycelError.maybe_applied`): False means certainly not (it was refused, or never
reached a replica); True means that some replica may hold it (it was sent and no answer came
in time, or fewer replicas than the quorum acknowledged it), and that it may still spread to
the others, as replicas that missed a write are sent it again.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BucketConflict",
    "BucketNotFound",
    "CacheClosed",
    "CacheTimeout",
    "KeyNotFound",
    "MycelError",
    "NotAnInteger",
    "ProtocolError",
    "QuorumNotReached",
    "SerializationError",
    "ValueTooLarge",
]


class MycelError(Exception):
    """Base class of every error mycel raises."""

    #: True if the failed operation may still have been applied (see the module docstring).
    maybe_applied: bool = False


class BucketNotFound(MycelError, LookupError):
    """The bucket does not exist (create it with ``create_bucket`` first)."""

    def __init__(self, bucket: str, message: str | None = None) -> None:
        self.bucket = bucket
        super().__init__(
            message or f"bucket {bucket!r} does not exist; create it with create_bucket() first"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.bucket, str(self)))


class KeyNotFound(MycelError, KeyError):
    """The key has no live value in the bucket."""

    def __init__(self, bucket: str, key: str, message: str | None = None) -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(message or f"key {key!r} not found in bucket {bucket!r}")

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, quoting it.
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.bucket, self.key, str(self)))


class QuorumNotReached(MycelError):
    """Fewer replicas acknowledged an operation than its quorum needs.

    ``failed_keys``: the keys that did not reach their quorum (of a ``put_many``, say);
    ``maybe_applied``: whether any of them may have been applied anyway.
    """

    def __init__(self, acked: int, needed: int, replicas: int, message: str | None = None, *,
                 failed_keys: list[str] | None = None, maybe_applied: bool = False) -> None:
        self.acked = acked
        self.needed = needed
        self.replicas = replicas
        self.failed_keys = [] if failed_keys is None else list(failed_keys)
        self.maybe_applied = maybe_applied
        super().__init__(
            message
            or f"quorum not reached: {acked} of {replicas} replicas acknowledged, {needed} needed"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.acked, self.needed, self.replicas, str(self)),
                           {"failed_keys": self.failed_keys, "maybe_applied": self.maybe_applied}))


class ValueTooLarge(MycelError, ValueError):
    """A serialized value is larger than the configured limit."""

    def __init__(self, size: int, limit: int, message: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            message or f"value of {size} bytes is larger than the limit of {limit} bytes"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.size, self.limit, str(self)))


class CacheTimeout(MycelError, TimeoutError):
    """A cache operation did not complete within its timeout (``maybe_applied``: see the module)."""

    def __init__(self, message: str = "", *, maybe_applied: bool = False) -> None:
        self.maybe_applied = maybe_applied
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (str(self),), {"maybe_applied": self.maybe_applied}))


class CacheClosed(MycelError):
    """The cache was closed (or its node stopped): it serves no more calls."""


class BucketConflict(MycelError, ValueError):
    """A bucket already exists with other settings."""


class NotAnInteger(MycelError, TypeError):
    """``incr`` on a value that is not an integer (or a result outside the supported range)."""


class ProtocolError(MycelError, ValueError):
    """A cache message could not be decoded."""


class SerializationError(MycelError, ValueError):
    """A value could not be serialized or deserialized."""


def _rebuild(cls: type[MycelError], args: tuple[Any, ...], keywords: dict[str, Any]) -> MycelError:
    """Unpickle an error whose constructor takes keyword-only arguments."""
    return cls(*args, **keywords)

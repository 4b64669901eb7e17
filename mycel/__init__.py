"""mycel: a distributed cache built on nodosum."""

import logging

from .aio import AsyncCache
from .cache import Cache
from .errors import (
    BucketConflict,
    BucketNotFound,
    CacheClosed,
    CacheTimeout,
    KeyNotFound,
    MycelError,
    NotAnInteger,
    QuorumNotReached,
    SerializationError,
    ValueTooLarge,
)
from .store import BucketSpec

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AsyncCache", "BucketConflict", "BucketNotFound", "BucketSpec", "Cache", "CacheClosed", "CacheTimeout",
    "KeyNotFound", "MycelError", "NotAnInteger", "QuorumNotReached", "SerializationError", "ValueTooLarge",
]

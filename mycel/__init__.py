"""mycel: a distributed cache built on nodosum."""

import logging

from .cache import Cache
from .errors import (
    BucketConflict,
    BucketNotFound,
    CacheTimeout,
    KeyNotFound,
    MycelError,
    NotAnInteger,
    QuorumNotReached,
    ValueTooLarge,
)
from .store import BucketSpec

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BucketConflict", "BucketNotFound", "BucketSpec", "Cache", "CacheTimeout", "KeyNotFound", "MycelError",
    "NotAnInteger", "QuorumNotReached", "ValueTooLarge",
]

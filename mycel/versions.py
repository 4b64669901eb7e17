"""Entry versions: a hybrid logical clock value paired with the writing node's id.

A :data:`Version` is ``(hlc, node_id)`` and versions compare as tuples: the
newer clock value wins, and equal clock values break the tie by node id, so every
node picks the same winner for concurrent writes.

The clock value is ``(milliseconds since the epoch << 16) | counter``: the high
bits follow the wall clock, the low 16 bits count writes within one millisecond
(or while the wall clock stands still or runs behind the last value issued).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["LOGICAL_BITS", "ZERO_VERSION", "HybridClock", "Version", "version_millis"]

logger = logging.getLogger(__name__)

Version = tuple[int, str]

#: Older than every version a clock issues.
ZERO_VERSION: Version = (0, "")

#: Width of the logical counter in the low bits of a clock value.
LOGICAL_BITS = 16

#: ``observe`` logs a warning when a peer's clock runs this far (ms) ahead of ours.
_DRIFT_WARNING_MS = 60_000


def version_millis(version: Version) -> int:
    """The wall-clock part of ``version``, in milliseconds since the epoch."""
    return version[0] >> LOGICAL_BITS


class HybridClock:
    """A thread-safe hybrid logical clock issuing strictly increasing versions."""

    __slots__ = ("node_id", "_wall", "_last", "_lock", "_warned_ms")

    def __init__(self, node_id: str, wall: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()
        self._warned_ms = -_DRIFT_WARNING_MS

    def now(self) -> Version:
        """A new version, newer than every version this clock issued or observed."""
        physical = int(self._wall() * 1000) << LOGICAL_BITS
        with self._lock:
            last = self._last
            # Counter overflow simply carries into the physical part: still monotonic.
            value = physical if physical > last else last + 1
            self._last = value
        return (value, self.node_id)

    def observe(self, version: Version) -> None:
        """Move the clock past ``version`` (seen from another node)."""
        value = version[0]
        with self._lock:
            if value <= self._last:
                return
            self._last = value
        wall_ms = int(self._wall() * 1000)
        ahead = (value >> LOGICAL_BITS) - wall_ms
        if ahead > _DRIFT_WARNING_MS and wall_ms - self._warned_ms >= _DRIFT_WARNING_MS:
            self._warned_ms = wall_ms  # at most one warning a minute
            logger.warning(
                "observed version from %r is %.1f s ahead of the local wall clock",
                version[1],
                ahead / 1000,
            )

    def last(self) -> int:
        """The latest clock value issued or observed (0 before any)."""
        with self._lock:
            return self._last

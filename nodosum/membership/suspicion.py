"""Suspicion timeouts as memberlist computes them (Lifeguard's dynamic suspicion)."""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """Minimum suspicion timeout: ``suspicion_mult * max(1, log10(n)) * probe_interval``.

    This is memberlist's code (util.go), not its comment's ``log(N+1)``; the node
    scale is truncated to milliseconds as there.
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * (math.floor(node_scale * 1000.0) / 1000.0) * probe_interval


def remaining_suspicion_time(n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float) -> float:
    """Time left after ``elapsed`` seconds with ``n`` of ``k`` wanted confirmations (may be negative).

    The total timeout falls from ``max_timeout`` (no confirmation) to
    ``min_timeout`` (``k`` confirmations) as ``log(n+1) / log(k+1)``.
    """
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = max(min_timeout, math.floor(1000.0 * raw) / 1000.0)
    return timeout - elapsed


class Suspicion:
    """The suspicion timer of one member: a deadline that shrinks with independent confirmations.

    Sans-I/O: it holds a ``deadline`` instead of a timer. The node that raised the
    suspicion (``from_node``) never counts as a confirmation.
    """

    __slots__ = ("k", "min_timeout", "max_timeout", "start", "n", "deadline", "checks_sent", "_confirmed")

    def __init__(self, from_node: str, k: int, min_timeout: float, max_timeout: float, start: float) -> None:
        self.k = k
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.start = start
        self.n = 0
        self.checks_sent = 0  # direct "are you there?" messages the core sent the suspect
        self._confirmed = {from_node}
        self.deadline = start + (max_timeout if k >= 1 else min_timeout)

    def confirm(self, from_node: str, now: float) -> bool:
        """Count a confirmation from ``from_node``; True if it was new (and moved the deadline)."""
        if self.n >= self.k or from_node in self._confirmed:
            return False
        self._confirmed.add(from_node)
        self.n += 1
        remaining = remaining_suspicion_time(self.n, self.k, now - self.start, self.min_timeout, self.max_timeout)
        self.deadline = now + max(0.0, remaining)
        return True

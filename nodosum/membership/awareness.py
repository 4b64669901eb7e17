"""Local health awareness (Lifeguard): slow down probing when this node itself looks unwell."""

from __future__ import annotations


class Awareness:
    """A health score in ``[0, max_multiplier - 1]``; 0 is healthy. Timeouts scale by ``score + 1``."""

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Add ``delta`` to the score, clamped to the allowed range."""
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        """``timeout`` stretched by the current score."""
        return timeout * (self.score + 1)

"""The transmit-limited broadcast queue: membership news piggybacked on packets."""

from __future__ import annotations

import math
from dataclasses import dataclass


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one message is sent: ``retransmit_mult * ceil(log10(n + 1))`` (memberlist)."""
    return retransmit_mult * int(math.ceil(math.log10(n + 1)))


@dataclass(slots=True)
class _Item:
    name: str
    message: bytes
    transmits: int
    order: int


class BroadcastQueue:
    """Pending broadcasts, one per member name (a newer one replaces the older).

    Messages sent fewest times go first, larger before smaller at equal counts,
    newer before older; each is dropped once sent ``retransmit_limit`` times.
    """

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._items: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, name: str, message: bytes) -> None:
        """Queue ``message`` about member ``name``, replacing any pending one about it."""
        self._order += 1
        self._items.pop(name, None)
        self._items[name] = _Item(name, message, 0, self._order)

    def pending(self, name: str) -> bool:
        return name in self._items

    def get(self, overhead: int, limit: int, num_nodes: int) -> list[bytes]:
        """Take messages fitting in ``limit`` bytes, each costing ``overhead`` extra bytes."""
        if not self._items or limit <= overhead:
            return []
        max_transmits = retransmit_limit(self.retransmit_mult, num_nodes)
        used = 0
        chosen: list[bytes] = []
        for item in sorted(self._items.values(), key=lambda i: (i.transmits, -len(i.message), -i.order)):
            free = limit - used - overhead
            if free <= 0:
                break
            if len(item.message) > free:
                continue
            used += overhead + len(item.message)
            chosen.append(item.message)
            item.transmits += 1
            if item.transmits >= max_transmits:
                del self._items[item.name]
        return chosen

    def clear(self) -> None:
        self._items.clear()

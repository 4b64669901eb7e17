"""The membership interface shared by the static list and gossip."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class MemberEventKind(enum.Enum):
    JOIN = "join"
    LEAVE = "leave"
    FAIL = "fail"
    UPDATE = "update"


@dataclass(frozen=True)
class Member:
    """A cluster member: its id, QUIC address and small user metadata."""

    node_id: str
    host: str
    port: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class MemberEvent:
    kind: MemberEventKind
    member: Member


MembershipListener = Callable[[MemberEvent], None]


class Membership(Protocol):
    """What the node needs from a membership implementation (loop thread only).

    ``shares_metadata``: members' metadata travels to the other members (gossip), so a
    node can advertise in it; ``joined``: this node is part of a cluster (a seed answered,
    or it started one).
    """

    shares_metadata: bool
    joined: bool

    def start(self, listener: MembershipListener) -> None: ...

    def stop(self) -> None: ...

    def members(self) -> list[Member]: ...

    def is_member(self, node_id: str) -> bool: ...

    def join(self, addresses: list[tuple[str, int]]) -> None:
        """Join (more) seeds by address, retrying until one answers."""

    async def leave(self, timeout: float) -> None:
        """Announce a graceful leave and wait (up to ``timeout``) until it has spread."""

    def update_meta(self, meta: dict[str, Any]) -> None:
        """Replace this node's metadata; the other members see an update event."""

    def stats(self) -> dict[str, int]:
        """Counters, and members by state (``members_alive``, ``members_suspect``, ...)."""

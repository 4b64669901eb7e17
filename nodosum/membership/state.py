"""Value types of the membership core: what one node believes about one member."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .base import Member
from .codec import NodeStatus

Address = tuple[str, int]
MAX_INCARNATION = 2**64 - 1
PUSH_PULL_SCALE_THRESHOLD = 32


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's push-pull interval scaling: unchanged up to 32 nodes, then +1x per doubling."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0)


@dataclass(frozen=True)
class MemberState:
    """A snapshot of what this node believes about one member (for debugging and tests)."""

    member: Member
    status: NodeStatus
    incarnation: int
    since: float


@dataclass(slots=True)
class NodeState:
    """The mutable record of one member in this node's view."""

    node_id: str
    host: str
    port: int
    meta: bytes
    meta_dict: dict[str, Any]
    incarnation: int
    status: NodeStatus
    state_change: float

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def member(self) -> Member:
        return Member(self.node_id, self.host, self.port, dict(self.meta_dict))


def check_local(local: Member, label: bytes, incarnation: int) -> None:
    """Validate the constructor arguments of the core (ConfigError names the field)."""
    if not local.node_id or len(local.node_id.encode("utf-8")) > 255:
        raise ConfigError("node_id", "must be 1 to 255 bytes of UTF-8")
    if len(local.host.encode("utf-8")) > 255:
        raise ConfigError("host", "must be at most 255 bytes")
    if not 0 <= local.port <= 0xFFFF:
        raise ConfigError("port", f"{local.port} is not a UDP port")
    if len(label) > 255:
        raise ConfigError("label", "must be at most 255 bytes")
    if not 0 <= incarnation < MAX_INCARNATION:
        raise ConfigError("incarnation", "must be between 0 and 2**64 - 2")

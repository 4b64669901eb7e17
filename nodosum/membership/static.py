"""A fixed peer list: every configured peer is a member from the start."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import Member, MemberEvent, MemberEventKind, MembershipListener


class StaticMembership:
    """Members from configuration (and :meth:`add` / :meth:`remove` at run time).

    Used until gossip membership replaces it; it never declares a peer failed,
    so the transport keeps reconnecting to a peer that is down.
    """

    shares_metadata = False  # every member counts for every application
    joined = True

    def __init__(self, local: Member, peers: list[Member]) -> None:
        self.local = local
        self._peers: dict[str, Member] = {}
        for peer in peers:
            if peer.node_id != local.node_id:
                self._peers[peer.node_id] = peer
        self._listener: MembershipListener | None = None

    def start(self, listener: MembershipListener) -> None:
        self._listener = listener
        for member in list(self._peers.values()):
            listener(MemberEvent(MemberEventKind.JOIN, member))

    def stop(self) -> None:
        self._listener = None

    def members(self) -> list[Member]:
        return [self.local, *self._peers.values()]

    def is_member(self, node_id: str) -> bool:
        return node_id == self.local.node_id or node_id in self._peers

    def join(self, addresses: list[tuple[str, int]]) -> None:
        raise ConfigError("membership", "join needs gossip membership; a static member list grows with add_peer")

    async def leave(self, timeout: float) -> None:
        """Nothing to announce: the others' lists are static too."""

    def update_meta(self, meta: dict[str, Any]) -> None:
        raise ConfigError("membership", "update_meta needs gossip membership: static members share no metadata")

    def stats(self) -> dict[str, int]:
        return {"members_alive": 1 + len(self._peers)}

    def add(self, member: Member) -> None:
        if member.node_id == self.local.node_id:
            return
        old = self._peers.get(member.node_id)
        self._peers[member.node_id] = member
        if self._listener is not None:
            kind = MemberEventKind.JOIN if old is None else MemberEventKind.UPDATE
            if old != member or old is None:
                self._listener(MemberEvent(kind, member))

    def remove(self, node_id: str) -> None:
        member = self._peers.pop(node_id, None)
        if member is not None and self._listener is not None:
            self._listener(MemberEvent(MemberEventKind.LEAVE, member))

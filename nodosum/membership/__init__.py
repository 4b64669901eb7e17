"""Membership: who is in the cluster, and events when that changes.

The transport and applications only see this interface (:class:`Member`,
:class:`MemberEvent`, :class:`Membership`), so gossip can replace the static list
without touching them.
"""

from .base import Member, MemberEvent, MemberEventKind, Membership, MembershipListener
from .static import StaticMembership

__all__ = ["Member", "MemberEvent", "MemberEventKind", "Membership", "MembershipListener", "StaticMembership"]

"""PeerTable: the sans-I/O policy of which QUIC connection carries the traffic to each peer.

No sockets, no asyncio, no clock: the adapter feeds membership changes, connection
events and demand with the current time, and executes the actions the table returns.
Connections are opaque handles (the adapter's connection objects, compared by
identity); the table never calls them. Waiters are opaque too: whatever the adapter
wants run once a connection is there (or failed if none comes).
Not thread-safe: drive one instance from one thread (the node's loop thread).

What it decides
---------------
* Lazy dialling: nothing is dialled until something waits for a connection
  (``wait``); a member event alone never dials.
* One connection per pair: when two verified connections meet (both sides dialled at
  once, or a seed was dialled by address), both sides keep the one dialled by the
  smaller node id and retire the other once its in-flight work is done.
* Probe and replace: a second connection that the rule would retire usually is the
  other half of a simultaneous dial, but it may come from a peer that was killed and
  restarted on the same address, whose old connection now leads nowhere (its packets
  are dropped; nothing closes it before the QUIC idle timeout). The newcomer waits
  while the current connection is probed; unanswered, the newcomer replaces it.
* Redial with backoff: after a failed dial, callers fail fast until a backoff
  (``reconnect_min`` doubling up to ``reconnect_max``, jittered) has passed; the next
  demand after it dials again.
* Idle close and a bound: a connection with no traffic for ``idle_timeout`` is closed;
  beyond ``max_open`` connections the least recently used are closed first.

Adapter contract
----------------
* ``member_up(node_id, address, now)`` on a join or update of another member;
  ``member_down(node_id, reason, now)`` on its leave or failure.
* To send to a peer: ``connection(node_id, now, address)``; when that returns None,
  ``wait(node_id, waiter, deadline, now, address)``. ``address`` is given only for
  traffic that may go to a non-member (membership's own exchanges).
* ``used(node_id, now)`` when traffic arrives from a peer (it keeps the connection
  from idling out; sending through ``connection`` counts already).
* ``connection_verified(conn, node_id, dialled, address, now)`` when a handshake
  completes and the peer proved ``node_id``; ``connection_closed(conn, now)`` once for
  every connection that was reported to the table (dial_started or verified).
* ``stalled(node_id, now)`` when a request on the peer's connection went unanswered:
  the connection is probed and closed if the peer does not answer.
* ``stop(reason)`` when the node shuts down.
* ``tick(now)`` whenever ``now >= next_deadline()``; re-read ``next_deadline()`` after
  every call into this class.
* After every call, drain ``actions()`` and execute them in order, before feeding the
  table anything else:

  - ``Dial(node_id, address)``: start a connection that must prove ``node_id``, and
    report it at once with ``dial_started(node_id, conn)``; it must end with
    ``connection_verified`` or ``connection_closed`` within the connect timeout.
  - ``Close(conn, reason)``: close it now; in-flight requests on it fail.
  - ``CloseIfQuiet(conn, reason)``: close it unless requests are still in flight on
    it in either direction; if they are, call ``busy(conn, now)`` instead.
  - ``Retire(conn)``: open no new streams on it; what is in flight finishes.
  - ``Probe(conn)``: check that the peer still answers (a QUIC PING) and report
    ``probe_result(conn, answered, now)`` exactly once (False if the connection closes
    first).
  - ``RunWaiters(conn, waiters)``: run each waiter with this connection.
  - ``FailWaiters(waiters, reason, timed_out)``: fail each (a timeout if ``timed_out``).

Every waiter is run or failed by its deadline. Peers that are neither members nor
connected are forgotten, so churn does not grow the table.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]

__all__ = [
    "Address", "Close", "CloseIfQuiet", "CloseReason", "Dial", "FailWaiters", "PeerTable", "Probe", "Retire",
    "RunWaiters",
]


class CloseReason(enum.Enum):
    """Why the table closes a connection (the adapter maps it to a QUIC error code)."""

    MEMBER_GONE = "member left or failed"
    UNRESPONSIVE = "unresponsive; replaced by a newer connection"
    DUPLICATE = "duplicate connection"
    IDLE = "idle"
    LIMIT = "too many open connections"
    UNWANTED = "dial no longer wanted"


@dataclass(frozen=True, slots=True)
class Dial:
    node_id: str
    address: Address


@dataclass(frozen=True, slots=True)
class Close:
    conn: Any
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class CloseIfQuiet:
    conn: Any
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Retire:
    conn: Any


@dataclass(frozen=True, slots=True)
class Probe:
    conn: Any


@dataclass(frozen=True, slots=True)
class RunWaiters:
    conn: Any
    waiters: list[Any]


@dataclass(frozen=True, slots=True)
class FailWaiters:
    waiters: list[Any]
    reason: str
    timed_out: bool = False


Action = Dial | Close | CloseIfQuiet | Retire | Probe | RunWaiters | FailWaiters

COUNTERS = (
    "dials", "dial_failures", "connections_duplicate", "connections_unresponsive", "connections_idle_closed",
    "connections_limit_closed",
)
_DIAL_PENDING = object()  # between a Dial action and its dial_started
_LIMIT_KEY = ""  # heap key of the open-connection bound's re-check (no node id is empty)
LIMIT_RECHECK = 1.0  # seconds between checks of the bound while it is exceeded


@dataclass(slots=True, eq=False)
class _Peer:
    node_id: str
    address: Address | None = None
    member: bool = False
    conn: Any = None  # the adopted connection
    dialling: Any = None  # our own dial in flight
    candidate: Any = None  # a newer connection waiting while ``conn`` is probed
    probing: Any = None  # the connection being probed
    retiring: dict[Any, float] = field(default_factory=dict)  # connection -> when to close it
    closing: set[Any] = field(default_factory=set)  # asked to close if quiet, not closed yet
    waiters: list[tuple[Any, float]] = field(default_factory=list)  # (waiter, deadline)
    failures: int = 0
    failed_reason: str | None = None
    retry_at: float = 0.0  # no new dial before (backoff)
    last_used: float = 0.0
    check_at: float = math.inf  # the table's next look at this peer

    def holds_nothing(self) -> bool:
        return (self.conn is None and self.dialling is None and self.candidate is None and not self.retiring
                and not self.closing and not self.waiters)

    def connections(self) -> list[Any]:
        conns = [c for c in (self.conn, self.dialling, self.candidate) if c is not None and c is not _DIAL_PENDING]
        return conns + list(self.retiring) + list(self.closing)


class PeerTable:
    """The connections of one node to its peers (see the module docstring for the adapter contract)."""

    def __init__(self, node_id: str, *, rng: random.Random, idle_timeout: float = math.inf, max_open: int = 1024,
                 reconnect_min: float = 0.2, reconnect_max: float = 10.0, retire_grace: float = 10.0,
                 max_waiters: int = 65536) -> None:
        self.node_id = node_id
        self.idle_timeout = idle_timeout
        self.max_open = max_open
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.retire_grace = retire_grace
        self.max_waiters = max_waiters
        self._rng = rng
        self._peers: dict[str, _Peer] = {}
        self._owner: dict[Any, _Peer] = {}  # every connection the table knows -> its peer
        self._open = 0  # peers with an adopted connection
        self._actions: list[Action] = []
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._limit_check_at = math.inf
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ views
    def actions(self) -> list[Action]:
        """What to execute, in order (then the list is empty)."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        while self._heap:
            when, _, key = self._heap[0]
            if self._valid_check(when, key):
                return when
            heapq.heappop(self._heap)
        return None

    def is_member(self, node_id: str) -> bool:
        peer = self._peers.get(node_id)
        return peer is not None and peer.member

    def adopted(self, node_id: str) -> Any:
        """The connection traffic to ``node_id`` uses now, or None."""
        peer = self._peers.get(node_id)
        return None if peer is None else peer.conn

    @property
    def open_connections(self) -> int:
        """Peers with an adopted connection."""
        return self._open

    def size(self) -> tuple[int, int, int]:
        """(peers, connections, timer entries) held: bounded by members and open connections."""
        return len(self._peers), len(self._owner), len(self._heap)

    # ------------------------------------------------------------------ membership
    def member_up(self, node_id: str, address: Address, now: float) -> None:
        if node_id == self.node_id:
            return
        peer = self._peer(node_id)
        moved = peer.address is not None and peer.address != address
        peer.member = True
        peer.address = address
        if moved and peer.conn is not None:
            self._probe(peer, peer.conn)  # it leads to the old address: keep it only if it still answers

    def member_down(self, node_id: str, reason: str, now: float) -> None:
        peer = self._peers.get(node_id)
        if peer is None:
            return
        conns = peer.connections()
        if peer.conn is not None:
            self._unadopt(peer)
        for conn in conns:
            self._forget(conn)
            self._emit(Close(conn, CloseReason.MEMBER_GONE))
        self._fail_waiters(peer, reason)
        del self._peers[node_id]

    # ------------------------------------------------------------------ demand
    def connection(self, node_id: str, now: float, address: Address | None = None) -> Any:
        """The connection to send on now, or None (then ``wait``). Counts as traffic."""
        peer = self._peers.get(node_id)
        if peer is None or peer.conn is None or not (peer.member or address is not None):
            return None
        peer.last_used = now
        return peer.conn

    def wait(self, node_id: str, waiter: Any, deadline: float, now: float, address: Address | None = None) -> None:
        """Run ``waiter`` once a connection to ``node_id`` is there; dial if none is under way."""
        peer = self._peers.get(node_id)
        if address is not None:
            peer = self._peer(node_id)
            if not peer.member:
                peer.address = address
        elif peer is None or not peer.member:
            self._emit(FailWaiters([waiter], f"node {node_id!r} is not a member of this cluster"))
            return
        if peer.conn is not None:
            peer.last_used = now
            self._emit(RunWaiters(peer.conn, [waiter]))
            return
        if peer.address is None:
            self._emit(FailWaiters([waiter], f"no address known for node {node_id!r}"))
            return
        if peer.dialling is None and now < peer.retry_at and address is None:
            self._emit(FailWaiters([waiter], f"node {node_id!r} is unreachable: {peer.failed_reason}"))
            return
        if len(peer.waiters) >= self.max_waiters:
            self._emit(FailWaiters([waiter], f"too many operations waiting for a connection to {node_id!r}"))
            return
        peer.waiters.append((waiter, deadline))
        self._schedule(peer, deadline)
        if peer.dialling is None:
            self._dial(peer, now)

    def used(self, node_id: str, now: float) -> None:
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.last_used = now

    def stalled(self, node_id: str, now: float) -> None:
        peer = self._peers.get(node_id)
        if peer is not None and peer.conn is not None:
            self._probe(peer, peer.conn)

    # ------------------------------------------------------------------ connection events
    def dial_started(self, node_id: str, conn: Any) -> None:
        peer = self._peers.get(node_id)
        if peer is None or peer.dialling is not _DIAL_PENDING:
            self._emit(Close(conn, CloseReason.UNWANTED))
            return
        peer.dialling = conn
        self._owner[conn] = peer

    def connection_verified(self, conn: Any, node_id: str, dialled: bool, address: Address, now: float) -> None:
        peer = self._owner.get(conn)
        if peer is None:  # accepted, or dialled by address (a seed): new to the table
            peer = self._peer(node_id)
            if peer.address is None:
                peer.address = address
            self._owner[conn] = peer
        elif peer.node_id != node_id:  # the adapter checks the proven id against the dialled one
            raise ValueError(f"connection {conn!r} was dialled for {peer.node_id!r}, verified as {node_id!r}")
        if peer.dialling is conn:
            peer.dialling = None
        current = peer.conn
        if current is None:
            self._adopt(peer, conn, now)
        elif dialled == (self.node_id < node_id):  # the rule keeps the newcomer
            self.counters["connections_duplicate"] += 1
            self._retire(peer, current, now)
            self._adopt(peer, conn, now)
        else:  # the rule keeps the current one, if it still answers
            if peer.candidate is not None:
                self.counters["connections_duplicate"] += 1
                self._retire(peer, peer.candidate, now)
            peer.candidate = conn
            self._probe(peer, current)

    def connection_closed(self, conn: Any, now: float, reason: str = "") -> None:
        peer = self._forget(conn)
        if peer is None:
            return
        if peer.dialling is conn:
            peer.dialling = None
            if peer.conn is None:
                self.counters["dial_failures"] += 1
                peer.failures += 1
                peer.failed_reason = reason or "connection failed"
                delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(peer.failures - 1, 30))
                peer.retry_at = now + delay * (0.5 + self._rng.random())
                self._fail_waiters(peer, f"cannot connect to {peer.node_id!r}: {peer.failed_reason}")
        elif peer.conn is conn:
            self._unadopt(peer)
            if peer.candidate is not None:  # the connection that was waiting to replace it
                candidate, peer.candidate = peer.candidate, None
                self._adopt(peer, candidate, now)
        self._drop_if_empty(peer)

    def probe_result(self, conn: Any, answered: bool, now: float) -> None:
        peer = self._owner.get(conn)
        if peer is None or peer.probing is not conn:
            return
        peer.probing = None
        candidate, peer.candidate = peer.candidate, None
        if answered and peer.conn is conn:
            if candidate is not None:
                self.counters["connections_duplicate"] += 1
                self._retire(peer, candidate, now)  # a duplicate after all
            return
        if peer.conn is conn:
            self.counters["connections_unresponsive"] += 1
            self._forget(conn)
            self._unadopt(peer)
            self._emit(Close(conn, CloseReason.UNRESPONSIVE))
        if candidate is not None:
            if peer.conn is None:
                self._adopt(peer, candidate, now)
            else:
                self._retire(peer, candidate, now)
        self._drop_if_empty(peer)

    def busy(self, conn: Any, now: float) -> None:
        """The answer to CloseIfQuiet: requests are in flight on ``conn``; it stays."""
        peer = self._owner.get(conn)
        if peer is None or conn not in peer.closing:
            return
        peer.closing.discard(conn)
        if peer.conn is None:
            self._adopt(peer, conn, now, enforce_limit=False)  # the bound is checked again later
        else:
            self._retire(peer, conn, now, announce=False)  # retired already: a new grace period

    def stop(self, reason: str) -> None:
        """The node shuts down (its endpoint closes every connection): fail every waiter and forget all."""
        for peer in self._peers.values():
            self._fail_waiters(peer, reason)
        self._peers.clear()
        self._owner.clear()
        self._heap.clear()
        self._open = 0

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if not self._valid_check(when, key):
                continue
            if key == _LIMIT_KEY:
                self._limit_check_at = math.inf
                self._enforce_limit(now, None)
            else:
                peer = self._peers[key]
                peer.check_at = math.inf
                self._check(peer, now)

    def _check(self, peer: _Peer, now: float) -> None:
        if peer.waiters:
            late = [w for w, deadline in peer.waiters if deadline <= now]
            if late:
                peer.waiters = [(w, d) for w, d in peer.waiters if d > now]
                self._emit(FailWaiters(late, f"no connection to {peer.node_id!r} in time", timed_out=True))
            for _, deadline in peer.waiters:
                self._schedule(peer, deadline)
        if peer.conn is not None:
            idle_at = peer.last_used + self.idle_timeout
            if idle_at <= now:
                self.counters["connections_idle_closed"] += 1
                self._close_if_quiet(peer, peer.conn, CloseReason.IDLE)
            else:
                self._schedule(peer, idle_at)
        for conn, at in list(peer.retiring.items()):
            if at <= now:
                del peer.retiring[conn]
                peer.closing.add(conn)
                self._emit(CloseIfQuiet(conn, CloseReason.DUPLICATE))
            else:
                self._schedule(peer, at)
        self._drop_if_empty(peer)

    # ------------------------------------------------------------------ internals
    def _peer(self, node_id: str) -> _Peer:
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(node_id)
        return peer

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _dial(self, peer: _Peer, now: float) -> None:
        assert peer.address is not None
        self.counters["dials"] += 1
        peer.dialling = _DIAL_PENDING
        self._emit(Dial(peer.node_id, peer.address))
        self._enforce_limit(now, peer)

    def _adopt(self, peer: _Peer, conn: Any, now: float, enforce_limit: bool = True) -> None:
        """Make ``conn`` the peer's connection and run what waited for one."""
        peer.conn = conn
        self._open += 1
        peer.failures = 0
        peer.failed_reason = None
        peer.retry_at = 0.0
        peer.last_used = now
        if peer.waiters:
            waiters, peer.waiters = [w for w, _ in peer.waiters], []
            self._emit(RunWaiters(conn, waiters))
        self._schedule(peer, now + self.idle_timeout)
        if enforce_limit:
            self._enforce_limit(now, peer)

    def _unadopt(self, peer: _Peer) -> None:
        peer.conn = None
        self._open -= 1

    def _retire(self, peer: _Peer, conn: Any, now: float, announce: bool = True) -> None:
        if peer.conn is conn:
            self._unadopt(peer)
        if peer.candidate is conn:
            peer.candidate = None
        peer.retiring[conn] = now + self.retire_grace
        self._schedule(peer, now + self.retire_grace)
        if announce:
            self._emit(Retire(conn))

    def _close_if_quiet(self, peer: _Peer, conn: Any, reason: CloseReason) -> None:
        if peer.conn is conn:
            self._unadopt(peer)
        peer.closing.add(conn)
        self._emit(CloseIfQuiet(conn, reason))

    def _probe(self, peer: _Peer, conn: Any) -> None:
        if peer.probing is None:
            peer.probing = conn
            self._emit(Probe(conn))

    def _fail_waiters(self, peer: _Peer, reason: str) -> None:
        if peer.waiters:
            waiters, peer.waiters = [w for w, _ in peer.waiters], []
            self._emit(FailWaiters(waiters, reason))

    def _forget(self, conn: Any) -> _Peer | None:
        """Drop ``conn`` from every role; returns its peer (None if unknown)."""
        peer = self._owner.pop(conn, None)
        if peer is not None:
            peer.retiring.pop(conn, None)
            peer.closing.discard(conn)
            if peer.candidate is conn:
                peer.candidate = None
            if peer.probing is conn:
                peer.probing = None
        return peer

    def _drop_if_empty(self, peer: _Peer) -> None:
        if not peer.member and peer.holds_nothing() and self._peers.get(peer.node_id) is peer:
            del self._peers[peer.node_id]

    def _schedule(self, peer: _Peer, when: float) -> None:
        if when < peer.check_at:
            peer.check_at = when
            heapq.heappush(self._heap, (when, next(self._seq), peer.node_id))

    def _valid_check(self, when: float, key: str) -> bool:
        if key == _LIMIT_KEY:
            return when == self._limit_check_at
        peer = self._peers.get(key)
        return peer is not None and peer.check_at == when

    def _enforce_limit(self, now: float, keep: _Peer | None) -> None:
        """Beyond ``max_open``, ask the least recently used connections to close."""
        dialling = 1 if keep is not None and keep.conn is None else 0
        excess = self._open + dialling - self.max_open
        if excess <= 0:
            return
        idle = sorted((p for p in self._peers.values() if p.conn is not None and p is not keep),
                      key=lambda p: p.last_used)
        for peer in idle[:excess]:
            self.counters["connections_limit_closed"] += 1
            self._close_if_quiet(peer, peer.conn, CloseReason.LIMIT)
        if self._limit_check_at == math.inf:
            self._limit_check_at = now + LIMIT_RECHECK
            heapq.heappush(self._heap, (self._limit_check_at, next(self._seq), _LIMIT_KEY))

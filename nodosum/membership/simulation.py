"""A deterministic, event-driven simulator of a cluster of :class:`Swim` nodes.

A fake clock and one priority queue of (time, action): packet deliveries and
each node's next deadline, so only moments where something happens cost time.
The network has seeded loss, delay (fixed + uniform jitter) and partitions.
Push-pull is modelled as an instantaneous, reliable exchange (it runs over QUIC
in the real node) that fails across partitions or to a stopped node.

Used by the tests and by ``scripts/sim_membership.py``.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .base import Member, MemberEventKind
from .codec import NodeStatus
from .config import SwimConfig
from .keyring import Keyring
from .suspicion import suspicion_timeout
from .swim import Address, Swim

logger = logging.getLogger(__name__)

_DELIVER, _TICK, _CALL = 0, 1, 2
_MAX_SAME_TIME_TICKS = 10_000


def detection_bound(config: SwimConfig, n: int) -> float:
    """Worst case, without loss, for *every* member to declare a killed member dead.

    * Randomised round robin: each member probes each other member once per round
      of ``n - 1`` probes, so whatever the phase, it probes the victim within two
      rounds: ``2 (n - 1)`` probe intervals.
    * That probe fails (direct, then indirect) one probe interval after it starts.
    * The suspicion timer starts at its maximum, ``suspicion_max_timeout_mult *
      suspicion_mult * max(1, log10 n) * probe_interval``, and only shrinks with
      confirmations; a late confirmation keeps ``suspicion_checks`` probe intervals
      for the direct checks, so add those.

    Each member's own probe thus bounds its detection, whatever gossip does:
    ``(2 (n - 1) + 1 + suspicion_checks) * probe_interval + max suspicion timeout``.
    In practice (many probers, Lifeguard confirmations) detection takes about the
    *minimum* suspicion timeout plus a probe interval or two.
    """
    min_timeout = suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    rounds = 2 * (n - 1) + 1 + config.suspicion_checks
    return rounds * config.probe_interval + config.suspicion_max_timeout_mult * min_timeout


@dataclass(frozen=True)
class TimelineEvent:
    """A member event as one node (``observer``) saw it."""

    time: float
    observer: str
    kind: MemberEventKind
    member: str
    incarnation: int | None = None


@dataclass
class SimNode:
    node_id: str
    address: Address
    swim: Swim
    up: bool = True
    generation: int = 0
    token: int = 0
    scheduled: float | None = None
    same_time_ticks: int = 0


@dataclass
class NetworkStats:
    sent: int = 0
    lost: int = 0
    blocked: int = 0
    delivered: int = 0
    push_pulls: int = 0
    push_pulls_failed: int = 0
    per_node_sent: dict[str, int] = field(default_factory=dict)


class Simulation:
    """N simulated nodes on a simulated network with a fake clock (all randomness seeded)."""

    def __init__(
        self,
        config: SwimConfig | None = None,
        *,
        seed: int = 0,
        loss: float = 0.0,
        delay: float = 0.0005,
        jitter: float = 0.001,
        keys: list[bytes] | None = None,
        label: bytes = b"",
    ) -> None:
        self.config = config or SwimConfig()
        self.seed = seed
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.keys = keys
        self.label = label
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.timeline: list[TimelineEvent] = []
        self.stats = NetworkStats()
        self._rng = random.Random(f"net/{seed}")
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._by_address: dict[Address, str] = {}
        self._group: dict[str, int] = {}
        self._partitioned = False

    # ------------------------------------------------------------------ nodes
    def add_node(
        self,
        node_id: str | None = None,
        *,
        seed: str | None = None,
        via: str = "push_pull",
        meta: dict[str, Any] | None = None,
        incarnation: int = 0,
        config: SwimConfig | None = None,
    ) -> str:
        """Start a node now and join it through ``seed`` (by push-pull, or by gossip with via="gossip")."""
        node_id = node_id or f"n{len(self.nodes):03d}"
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} exists; use restart()")
        index = len(self.nodes)
        address = (f"10.{index // 65536}.{index // 256 % 256}.{index % 256}", 7946)
        self._by_address[address] = node_id
        node = SimNode(node_id, address, self._new_swim(node_id, address, 0, meta, incarnation, config))
        self.nodes[node_id] = node
        self._join(node, seed, via)
        return node_id

    def start_cluster(self, n: int, *, via: str = "push_pull", meta: dict[str, Any] | None = None) -> list[str]:
        """Start ``n`` nodes at the current time; all but the first join through the first."""
        first = self.add_node(meta=meta)
        return [first] + [self.add_node(seed=first, via=via, meta=meta) for _ in range(n - 1)]

    def kill(self, node_id: str) -> None:
        """Stop a node abruptly (no leave): it stops receiving, sending and ticking."""
        self.nodes[node_id].up = False

    def restart(
        self,
        node_id: str,
        *,
        seed: str | None,
        via: str = "push_pull",
        incarnation: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Start a fresh instance with the same id and address (state lost) and join through ``seed``."""
        node = self.nodes[node_id]
        node.generation += 1
        node.swim = self._new_swim(node_id, node.address, node.generation, meta, incarnation, None)
        node.up = True
        node.token += 1
        node.scheduled = None
        self._join(node, seed, via)

    def leave(self, node_id: str, *, timeout: float = 5.0) -> None:
        """Graceful leave: announce it, keep running until the announcement is out, then stop."""
        node = self.nodes[node_id]
        node.swim.leave(self.now)
        self._after(node)
        deadline = self.now + timeout
        step = self.config.gossip_interval

        def check() -> None:
            if not node.up:
                return
            if node.swim.leave_complete or self.now >= deadline:
                node.up = False
            else:
                self._push(self.now + step, _CALL, check)

        self._push(self.now + step, _CALL, check)

    def update_meta(self, node_id: str, meta: dict[str, Any]) -> None:
        node = self.nodes[node_id]
        node.swim.update_meta(meta, self.now)
        self._after(node)

    # ------------------------------------------------------------------ network
    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network between groups; nodes named in no group form one more group."""
        self._group = {}
        for index, group in enumerate(groups, start=1):
            for node_id in group:
                self._group[node_id] = index
        self._partitioned = True

    def heal(self) -> None:
        self._group = {}
        self._partitioned = False

    def set_loss(self, loss: float) -> None:
        self.loss = loss

    def blocked(self, a: str, b: str) -> bool:
        return self._partitioned and self._group.get(a, 0) != self._group.get(b, 0)

    # ------------------------------------------------------------------ running
    def run(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until(self, t_end: float) -> None:
        """Process every event up to simulated time ``t_end``."""
        heap = self._heap
        while heap and heap[0][0] <= t_end:
            time, _, kind, payload = heapq.heappop(heap)
            self.now = time
            if kind == _DELIVER:
                self._deliver(*payload)
            elif kind == _TICK:
                node_id, token = payload
                node = self.nodes[node_id]
                if node.up and token == node.token:
                    node.scheduled = None
                    node.swim.tick(time)
                    self._after(node)
            else:
                payload()
        self.now = max(self.now, t_end)

    def run_until_true(self, condition: Callable[[], bool], timeout: float, step: float = 0.1) -> float | None:
        """Run in steps until ``condition()``; the simulated time it became true, or None at timeout."""
        end = self.now + timeout
        while True:
            if condition():
                return self.now
            if self.now >= end:
                return None
            self.run_until(min(end, self.now + step))

    # ------------------------------------------------------------------ views
    def live_ids(self) -> list[str]:
        """Nodes running and not leaving."""
        return [n.node_id for n in self.nodes.values() if n.up and not n.swim.has_left]

    def members_of(self, observer: str) -> set[str]:
        """Who ``observer`` lists as members (alive or suspect, itself included)."""
        return {m.node_id for m in self.nodes[observer].swim.members()}

    def status_view(self, observer: str) -> dict[str, NodeStatus]:
        return {s.member.node_id: s.status for s in self.nodes[observer].swim.member_states()}

    def views(self) -> dict[str, dict[str, NodeStatus]]:
        """Every live node's view of every member it knows, at the current simulated time."""
        return {node_id: self.status_view(node_id) for node_id in self.live_ids()}

    def status(self, observer: str, member: str) -> NodeStatus | None:
        return self.nodes[observer].swim.status_of(member)

    def converged(self, expected: Iterable[str] | None = None, *, strict: bool = True) -> bool:
        """Every live node lists exactly ``expected`` (default: the live nodes); strict = none suspect."""
        live = self.live_ids()
        want = set(expected) if expected is not None else set(live)
        for node_id in live:
            swim = self.nodes[node_id].swim
            if strict:
                got = {s.member.node_id for s in swim.member_states() if s.status == NodeStatus.ALIVE}
            else:
                got = {m.node_id for m in swim.members()}
            if got != want:
                return False
        return True

    def events_about(self, member: str, kind: MemberEventKind | None = None, since: float = 0.0) -> list[TimelineEvent]:
        return [
            e for e in self.timeline if e.member == member and e.time >= since and (kind is None or e.kind == kind)
        ]

    def dropped_packets(self) -> int:
        """Packets nodes dropped as undecryptable / undecodable (should stay 0 in a clean simulation)."""
        return sum(n.swim.dropped for n in self.nodes.values())

    # ------------------------------------------------------------------ internals
    def _new_swim(
        self,
        node_id: str,
        address: Address,
        generation: int,
        meta: dict[str, Any] | None,
        incarnation: int,
        config: SwimConfig | None,
    ) -> Swim:
        rng = random.Random(f"node/{self.seed}/{node_id}/{generation}")
        keyring = Keyring(self.keys) if self.keys else None
        member = Member(node_id, address[0], address[1], dict(meta or {}))
        return Swim(
            member, config or self.config, rng=rng, now=self.now, keyring=keyring, label=self.label,
            incarnation=incarnation,
        )  # fmt: skip

    def _join(self, node: SimNode, seed: str | None, via: str) -> None:
        if seed is not None:
            if via == "push_pull":
                self._exchange(node, self.nodes[seed].address, join=True)
            elif via == "gossip":
                node.swim.join([self.nodes[seed].address], self.now)
            else:
                raise ValueError(f"unknown join method {via!r}")
        self._after(node)

    def _push(self, time: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, payload))

    def _deliver(self, dst: Address, packet: bytes, src_id: str, src: Address) -> None:
        dst_id = self._by_address.get(dst)
        node = self.nodes.get(dst_id) if dst_id is not None else None
        if node is None or not node.up:
            return
        if self.blocked(src_id, node.node_id):
            self.stats.blocked += 1
            return
        self.stats.delivered += 1
        node.swim.receive(packet, src, self.now)
        self._after(node)

    def _after(self, node: SimNode) -> None:
        """Collect what a node produced: packets, events, push-pull requests; reschedule its tick."""
        swim = node.swim
        stats = self.stats
        for packet, dst in swim.outgoing():
            stats.sent += 1
            stats.per_node_sent[node.node_id] = stats.per_node_sent.get(node.node_id, 0) + 1
            if self.loss and self._rng.random() < self.loss:
                stats.lost += 1
                continue
            latency = self.delay + (self._rng.random() * self.jitter if self.jitter else 0.0)
            self._push(self.now + latency, _DELIVER, (dst, packet, node.node_id, node.address))
        for event in swim.events():
            member = event.member.node_id
            state = swim.state_of(member)
            inc = state.incarnation if state is not None else None
            self.timeline.append(TimelineEvent(self.now, node.node_id, event.kind, member, inc))
        for peer in swim.push_pull_requests():
            self._exchange(node, peer.address, join=False)
        if not node.up:
            return
        deadline = swim.next_deadline()
        if deadline is None:
            node.scheduled = None
            return
        deadline = max(deadline, self.now)
        if deadline == node.scheduled:
            return
        if deadline == self.now:
            node.same_time_ticks += 1
            if node.same_time_ticks > _MAX_SAME_TIME_TICKS:
                raise RuntimeError(f"{node.node_id}: tick loop at t={self.now}")
        else:
            node.same_time_ticks = 0
        node.token += 1
        node.scheduled = deadline
        self._push(deadline, _TICK, (node.node_id, node.token))

    def _exchange(self, node: SimNode, address: Address, *, join: bool) -> bool:
        """An instantaneous push-pull between ``node`` and whoever runs at ``address``."""
        self.stats.push_pulls += 1
        peer_id = self._by_address.get(address)
        peer = self.nodes.get(peer_id) if peer_id is not None else None
        if peer is None or not peer.up or peer is node or self.blocked(node.node_id, peer.node_id):
            self.stats.push_pulls_failed += 1
            return False
        blob = node.swim.local_state(join)
        peer.swim.merge_remote_state(blob, self.now)
        reply = peer.swim.local_state()
        node.swim.merge_remote_state(reply, self.now)
        self._after(peer)
        self._after(node)
        return True

"""Swim: the sans-I/O SWIM membership core, with memberlist's Lifeguard extensions.

No sockets, no asyncio, no clock: the adapter feeds received packets and the
current time, and drains what to send, member events and push-pull requests.
Not thread-safe: drive one instance from one thread (the node's loop thread).

Adapter contract
----------------
* ``receive(packet, addr, now)`` for every UDP datagram whose first byte has
  the 0x40 bit clear (QUIC packets always have it set).
* ``tick(now)`` whenever ``now >= next_deadline()``; re-read ``next_deadline()``
  after every call into this class (a received packet may queue gossip).
* after each call: send ``outgoing()``, dispatch ``events()``, and run a
  push-pull for each member of ``push_pull_requests()``.
* push-pull (over the authenticated QUIC connection): the initiator sends
  ``local_state(join)``; the responder calls ``merge_remote_state(blob, now)``
  and answers with its ``local_state()``; the initiator merges the answer.
* join: push-pull with ``join=True`` against a seed, or ``join(addresses)`` to
  join by gossip (a ping to the seed address, retried while alone; once the
  seed answers, a push-pull with it is requested, unless push-pull is off).
* leave: ``leave(now)``, keep ticking and sending until ``leave_complete`` (or
  a timeout of a few gossip intervals), then stop.

Events: JOIN when a member appears or comes back from dead/left, UPDATE when
its metadata or address changes, FAIL when it is declared dead (suspicion
timed out), LEAVE when it announced a graceful leave. Suspicion is not an
event: a suspect is still a member.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .awareness import Awareness
from .base import Member, MemberEvent, MemberEventKind
from .broadcast import BroadcastQueue
from .codec import (
    COMPOUND_HEADER_OVERHEAD,
    COMPOUND_PART_OVERHEAD,
    Ack,
    Alive,
    Compound,
    Dead,
    IndirectPing,
    MemberRecord,
    Message,
    Nack,
    NodeStatus,
    Ping,
    PushPull,
    Suspect,
    add_label,
    compound,
    decode,
    encode,
    label_overhead,
    strip_label,
)
from .config import SwimConfig
from .errors import GossipDecodeError, GossipDecryptError
from .keyring import ENCRYPT_OVERHEAD, Keyring
from .meta import decode_meta, encode_meta
from .state import MAX_INCARNATION, Address, MemberState, NodeState, check_local, push_pull_scale
from .suspicion import Suspicion, suspicion_timeout

__all__ = ["COUNTERS", "Address", "MemberState", "Swim", "push_pull_scale"]

logger = logging.getLogger(__name__)

ALIVE, SUSPECT, DEAD, LEFT = NodeStatus.ALIVE, NodeStatus.SUSPECT, NodeStatus.DEAD, NodeStatus.LEFT

COUNTERS = (
    "packets_received", "packets_sent", "decrypt_errors", "decode_errors", "label_errors",
    "unexpected_messages", "handler_errors", "bad_meta", "address_conflicts", "misdirected_pings",
    "probes", "probe_failures", "indirect_probes", "suspects_raised", "refutes", "push_pulls_merged",
    "push_pull_errors", "stale_notices", "greetings",
)  # fmt: skip


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    timeout_at: float  # direct ack expected by then, else indirect probes
    end_at: float  # no ack at all by then: suspect
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    orig_seq: int
    requester: Address
    nack: bool
    deadline: float


class Swim:
    """One node's SWIM state machine (see the module docstring for the adapter contract)."""

    def __init__(
        self,
        local: Member,
        config: SwimConfig,
        *,
        rng: random.Random,
        now: float,
        keyring: Keyring | None = None,
        label: bytes = b"",
        incarnation: int = 0,
    ) -> None:
        """``incarnation`` seeds the local incarnation number: an adapter may pass a value
        derived from the wall clock so that a restarted node outranks its former self at
        once; with 0 the restarted node still rejoins by refuting what peers tell it."""
        check_local(local, label, incarnation)
        self.config = config
        self._rng = rng
        self._keyring = keyring
        self._label = bytes(label)
        self._local_id = local.node_id
        self._now = now
        self._incarnation = incarnation
        meta_raw = encode_meta(local.meta, config.max_meta_size)
        me = NodeState(local.node_id, local.host, local.port, meta_raw, dict(local.meta), incarnation, ALIVE, now)
        self._nodes: dict[str, NodeState] = {local.node_id: me}
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._seq = rng.randrange(2**32)
        self._leaving = False
        self._broadcasts = BroadcastQueue(config.retransmit_mult)
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._suspicions: dict[str, Suspicion] = {}
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._failed: dict[str, tuple[Member, float]] = {}
        self._notified: dict[str, float] = {}
        self._corrected: dict[Address, float] = {}
        self._seeds: list[Address] = []
        self._out: list[tuple[bytes, Address]] = []
        self._events: list[MemberEvent] = []
        self._pp_requests: list[Member] = []
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        overhead = ENCRYPT_OVERHEAD if keyring is not None else label_overhead(self._label)
        self._budget = config.max_packet_size - overhead
        self._next_probe = now + rng.random() * config.probe_interval
        self._next_gossip = now + rng.random() * config.gossip_interval
        self._next_push_pull = now + rng.random() * config.push_pull_interval if config.push_pull_interval else math.inf
        self._next_reconnect = now + config.reconnect_interval if config.reconnect_interval else math.inf
        self._broadcasts.queue(self._local_id, self._local_alive())

    # ------------------------------------------------------------------ views
    @property
    def local(self) -> Member:
        """This node as a member (with its current metadata)."""
        return self._nodes[self._local_id].member()

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 is healthy; probe interval and timeout scale by score + 1."""
        return self._awareness.score

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the counters (packets, drops by cause, probes, refutes...)."""
        return dict(self.counters)

    @property
    def dropped(self) -> int:
        """Packets dropped because they failed to decrypt, authenticate or decode."""
        c = self.counters
        return c["decrypt_errors"] + c["decode_errors"] + c["label_errors"] + c["unexpected_messages"]

    @property
    def has_left(self) -> bool:
        return self._leaving

    @property
    def leave_complete(self) -> bool:
        """True once the "left" announcement has been sent its full retransmit count (or no one is left)."""
        return self._leaving and (not self._broadcasts.pending(self._local_id) or self._num_alive_others() == 0)

    @property
    def num_members(self) -> int:
        """Members alive or suspect, this node included."""
        return sum(1 for n in self._nodes.values() if n.status <= SUSPECT)

    @property
    def num_alive(self) -> int:
        """Members not suspected, this node included."""
        return sum(1 for n in self._nodes.values() if n.status == ALIVE)

    def members(self) -> list[Member]:
        """Alive and suspect members, this node first (until it leaves)."""
        return [n.member() for n in self._nodes.values() if n.status <= SUSPECT]

    def member_states(self) -> list[MemberState]:
        """Every known node, dead and left ones included until they are reaped."""
        return [MemberState(n.member(), n.status, n.incarnation, n.state_change) for n in self._nodes.values()]

    def is_member(self, node_id: str) -> bool:
        """True if ``node_id`` is alive or suspect in this node's view."""
        node = self._nodes.get(node_id)
        return node is not None and node.status <= SUSPECT

    def status_of(self, node_id: str) -> NodeStatus | None:
        node = self._nodes.get(node_id)
        return node.status if node is not None else None

    def state_of(self, node_id: str) -> MemberState | None:
        node = self._nodes.get(node_id)
        if node is None:
            return None
        return MemberState(node.member(), node.status, node.incarnation, node.state_change)

    # ------------------------------------------------------------------ drains
    def outgoing(self) -> list[tuple[bytes, Address]]:
        """Packets to send (encrypted when a keyring is set), and forget them."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[MemberEvent]:
        """Member events since the last call: JOIN, LEAVE (graceful), FAIL (declared dead), UPDATE."""
        events, self._events = self._events, []
        return events

    def push_pull_requests(self) -> list[Member]:
        """Members to run a push-pull state exchange with (periodic sync and reconnects)."""
        requests, self._pp_requests = self._pp_requests, []
        return requests

    # ------------------------------------------------------------------ input
    def receive(self, packet: bytes, addr: Address, now: float) -> None:
        """Handle one gossip datagram from ``addr``. Bad packets are counted and dropped."""
        self._now = now
        self.counters["packets_received"] += 1
        try:
            plain = self._keyring.decrypt(packet, self._label) if self._keyring else strip_label(self._label, packet)
        except GossipDecryptError:
            self.counters["decrypt_errors"] += 1
            return
        except GossipDecodeError:
            self.counters["label_errors"] += 1
            return
        try:
            msg = decode(plain)
        except GossipDecodeError as exc:
            self.counters["decode_errors"] += 1
            logger.debug("dropped undecodable gossip packet from %s: %s", addr, exc)
            return
        if isinstance(msg, PushPull):
            self.counters["unexpected_messages"] += 1
            return
        for part in msg.messages if isinstance(msg, Compound) else (msg,):
            self._guarded(self._handle, part, addr, now)

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._now = now
        cfg = self.config
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent and now >= probe.timeout_at:
                self._send_indirect(probe)
            if now >= probe.end_at:
                self._probe = None
                self._probe_failed(probe, now)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)
        if self._relays:
            for seq, relay in list(self._relays.items()):
                if now >= relay.deadline:
                    del self._relays[seq]
                    if relay.nack:
                        self._send(relay.requester, [encode(Nack(relay.orig_seq))])
        if self._suspicions:
            for node_id, susp in list(self._suspicions.items()):
                if now >= susp.deadline:
                    self._suspicion_expired(node_id, susp, now)
                elif now >= self._next_check(susp):
                    self._check_suspect(node_id, susp)
        if now >= self._next_gossip and self._broadcasts and cfg.gossip_nodes:
            self._next_gossip = now + cfg.gossip_interval
            self._gossip(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_scale(cfg.push_pull_interval, len(self._nodes))
            peers = self._random_nodes(1, lambda n: n.status == ALIVE)
            if peers and not self._leaving:
                self._pp_requests.append(peers[0].member())
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            self._reconnect(now)

    def next_deadline(self) -> float | None:
        """When ``tick`` should next run (may be in the past: then tick at once)."""
        probe = self._probe
        if probe is None:
            times = [self._next_probe] if not self._leaving else []
        else:
            times = [probe.end_at if probe.indirect_sent else probe.timeout_at]
        if self._relays:
            times.append(min(r.deadline for r in self._relays.values()))
        if self._suspicions:
            times.append(min(min(s.deadline, self._next_check(s)) for s in self._suspicions.values()))
        if self._broadcasts and self.config.gossip_nodes:
            times.append(self._next_gossip)
        if self._next_push_pull != math.inf and not self._leaving:
            times.append(self._next_push_pull)
        if self._failed and self._next_reconnect != math.inf:
            times.append(self._next_reconnect)
        return min(times) if times else None

    # ------------------------------------------------------------------ API
    def join(self, addresses: Iterable[Address], now: float) -> None:
        """Join by gossip through seed addresses (ids unknown): ping them with our alive.

        Retried every probe interval while this node knows no other live member.
        """
        self._now = now
        self._seeds = [(str(h), int(p)) for h, p in addresses]
        self._send_join_pings()

    def local_state(self, join: bool = False) -> bytes:
        """This node's full membership view, for a push-pull exchange."""
        records = tuple(
            MemberRecord(n.node_id, n.host, n.port, n.incarnation, n.status, n.meta) for n in self._nodes.values()
        )
        return encode(PushPull(join, records))

    def merge_remote_state(self, blob: bytes, now: float) -> bool:
        """Merge a peer's push-pull state; returns its ``join`` flag.

        Raises :class:`GossipDecodeError` (and counts it) when ``blob`` is not a state.
        """
        self._now = now
        try:
            msg = decode(blob)
            if not isinstance(msg, PushPull):
                raise GossipDecodeError(f"expected a push-pull state, got {type(msg).__name__}")
        except GossipDecodeError:
            self.counters["push_pull_errors"] += 1
            raise
        # Our own record first: a refutation then goes out with any greeting below.
        for rec in sorted(msg.members, key=lambda r: r.node != self._local_id):
            if rec.status == ALIVE:
                self._guarded(self._on_alive, Alive(rec.incarnation, rec.node, rec.host, rec.port, rec.meta), now, None)
            elif rec.status == LEFT:
                self._guarded(self._on_dead, Dead(rec.incarnation, rec.node, rec.node), now, None)
            else:  # a remote "dead" only makes us suspect, as memberlist does
                self._guarded(self._on_suspect, Suspect(rec.incarnation, rec.node, self._local_id), now, None)
        self.counters["push_pulls_merged"] += 1
        return msg.join

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep ticking until ``leave_complete`` (or a timeout)."""
        self._now = now
        if self._leaving:
            return
        self._leaving = True
        self._probe = None
        self._on_dead(Dead(self._incarnation, self._local_id, self._local_id), now, None)

    def update_meta(self, meta: dict[str, Any], now: float) -> None:
        """Replace this node's user metadata (at most ``max_meta_size`` bytes as JSON) and gossip it."""
        self._now = now
        raw = encode_meta(meta, self.config.max_meta_size)
        if self._leaving:
            raise ConfigError("meta", "cannot update metadata after leaving")
        me = self._nodes[self._local_id]
        me.meta, me.meta_dict = raw, dict(meta)
        self._incarnation = min(MAX_INCARNATION, self._incarnation + 1)
        me.incarnation = self._incarnation
        self._broadcasts.queue(self._local_id, self._local_alive())

    # ------------------------------------------------------------------ probing
    def _start_probe(self, now: float) -> None:
        cfg = self.config
        self._next_probe = now + cfg.probe_interval
        if self._leaving:
            return
        if self._seeds:
            if self._num_alive_others() == 0:
                self._send_join_pings()
            else:
                self._seeds = []
        node = self._select_probe_target(now)
        if node is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(
            node.node_id, seq, now, now + self._awareness.scale(cfg.probe_timeout),
            now + self._awareness.scale(cfg.probe_interval),
        )  # fmt: skip
        parts = [encode(Ping(seq, node.node_id, self._local_id, *self._local_address()))]
        if node.status != ALIVE:  # let a suspect refute as soon as possible (memberlist)
            parts.append(encode(Suspect(node.incarnation, node.node_id, self._local_id)))
        self.counters["probes"] += 1
        self._send(node.address, parts)

    def _select_probe_target(self, now: float) -> NodeState | None:
        checked = 0
        while checked <= len(self._probe_list):
            if self._probe_index >= len(self._probe_list):
                self._reset_nodes(now)
                self._probe_index = 0
                checked += 1
                continue
            node = self._nodes[self._probe_list[self._probe_index]]
            self._probe_index += 1
            if node.status <= SUSPECT:
                return node
            checked += 1
        return None

    def _reset_nodes(self, now: float) -> None:
        """At the end of a probe round: reap long-dead members and reshuffle the order."""
        keep = []
        for node_id in self._probe_list:
            node = self._nodes[node_id]
            if node.status >= DEAD and now - node.state_change > self.config.gossip_to_the_dead_time:
                del self._nodes[node_id]
                self._suspicions.pop(node_id, None)
            else:
                keep.append(node_id)
        self._rng.shuffle(keep)
        self._probe_list = keep
        limit = self.config.probe_interval
        self._notified = {k: t for k, t in self._notified.items() if now - t < limit}
        self._corrected = {k: t for k, t in self._corrected.items() if now - t < limit}

    def _send_indirect(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._nodes.get(probe.target)
        if target is None:
            return
        peers = self._random_nodes(
            self.config.indirect_checks, lambda n: n.status == ALIVE and n.node_id != probe.target
        )
        host, port = self._local_address()
        msg = encode(IndirectPing(probe.seq, target.node_id, target.host, target.port, self._local_id, host, port))
        for peer in peers:
            self._send(peer.address, [msg])
        probe.expected_nacks = len(peers)
        self.counters["indirect_probes"] += 1

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self.counters["probe_failures"] += 1
        # Lifeguard: missing nacks mean *we* may be the slow one.
        if probe.expected_nacks > 0:
            self._awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._awareness.apply_delta(1)
        node = self._nodes.get(probe.target)
        if node is not None and node.status <= SUSPECT:
            logger.debug("%s: probe of %s failed, suspecting it", self._local_id, node.node_id)
            self._on_suspect(Suspect(node.incarnation, node.node_id, self._local_id), now, None)

    # ------------------------------------------------------------------ messages
    def _handle(self, msg: Message, addr: Address, now: float) -> None:
        kind = type(msg)
        if kind is Ping:
            self._on_ping(msg, addr, now)  # type: ignore[arg-type]
        elif kind is Ack:
            self._on_ack(msg)  # type: ignore[arg-type]
        elif kind is Nack:
            probe = self._probe
            if probe is not None and probe.seq == msg.seq:  # type: ignore[union-attr]
                probe.nacks += 1
        elif kind is IndirectPing:
            self._on_indirect_ping(msg, addr, now)  # type: ignore[arg-type]
        elif kind is Alive:
            self._on_alive(msg, now, addr)  # type: ignore[arg-type]
        elif kind is Suspect:
            self._on_suspect(msg, now, addr)  # type: ignore[arg-type]
        elif kind is Dead:
            self._on_dead(msg, now, addr)  # type: ignore[arg-type]

    def _on_ping(self, ping: Ping, addr: Address, now: float) -> None:
        if ping.target and ping.target != self._local_id:
            self.counters["misdirected_pings"] += 1
            return
        reply_to = (ping.source_host, ping.source_port) if ping.source_host and ping.source_port else addr
        parts = [encode(Ack(ping.seq))]
        if not ping.target and not self._leaving:  # a join ping: introduce ourselves
            parts.append(self._local_alive())
        self._send(reply_to, parts)
        if not ping.source or ping.source == self._local_id:
            return
        source = self._nodes.get(ping.source)
        if source is None:
            # Probed by a member we do not know (we restarted, or missed its alive):
            # ask it to introduce itself, as a join ping does.
            last = self._notified.get(ping.source)
            if not self._leaving and (last is None or now - last >= self.config.probe_interval):
                self._notified[ping.source] = now
                host, port = self._local_address()
                intro = encode(Ping(self._next_seq(), "", self._local_id, host, port))
                self._send(reply_to, [intro, self._local_alive()])
        elif source.status >= DEAD:
            self._notify_stale(source, now)

    def _on_ack(self, ack: Ack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == ack.seq:
            self._probe = None
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            self._send(relay.requester, [encode(Ack(relay.orig_seq))])

    def _on_indirect_ping(self, ind: IndirectPing, addr: Address, now: float) -> None:
        seq = self._next_seq()
        requester = (ind.source_host, ind.source_port) if ind.source_host and ind.source_port else addr
        self._relays[seq] = _Relay(ind.seq, requester, ind.nack, now + self.config.probe_timeout)
        ping = Ping(seq, ind.target, self._local_id, *self._local_address())
        self._send((ind.target_host, ind.target_port), [encode(ping)])

    def _on_alive(self, a: Alive, now: float, reply_to: Address | None) -> None:
        if not a.node:
            return
        is_local = a.node == self._local_id
        if is_local and self._leaving:
            return
        try:
            meta = decode_meta(a.meta, self.config.max_meta_size)
        except ValueError:
            self.counters["bad_meta"] += 1
            return
        node = self._nodes.get(a.node)
        if node is None:
            node = NodeState(a.node, a.host, a.port, a.meta, meta, a.incarnation, ALIVE, now)
            self._nodes[a.node] = node
            self._insert_probe(a.node)
            self._broadcasts.queue(a.node, encode(a))
            self._joined(node)
            return
        reclaim = False
        if (node.host, node.port) != (a.host, a.port):
            cfg = self.config
            reclaimable = cfg.dead_node_reclaim_time > 0 and now - node.state_change > cfg.dead_node_reclaim_time
            if node.status == LEFT or (node.status == DEAD and reclaimable):
                reclaim = True
            else:
                self.counters["address_conflicts"] += 1
                logger.warning(
                    "conflicting address for %s: known %s:%s, claimed %s:%s",
                    a.node, node.host, node.port, a.host, a.port,
                )  # fmt: skip
                return
        if is_local:
            if a.incarnation < node.incarnation or (a.incarnation == node.incarnation and a.meta == node.meta):
                return
            self._refute(a.incarnation, reply_to)
            return
        if a.incarnation <= node.incarnation and not reclaim:
            # Stale news. Tell the node if we hold it dead (it rejoins by refuting), or if
            # it announced itself with an incarnation older than ours (a restart).
            if node.status >= DEAD or (a.incarnation < node.incarnation and reply_to == node.address):
                self._notify_stale(node, now)
            return
        self._suspicions.pop(a.node, None)
        self._broadcasts.queue(a.node, encode(a))
        old_status, old_meta, old_address = node.status, node.meta, node.address
        node.incarnation, node.host, node.port, node.meta, node.meta_dict = a.incarnation, a.host, a.port, a.meta, meta
        if node.status != ALIVE:
            node.status, node.state_change = ALIVE, now
        if old_status >= DEAD:
            self._joined(node)
        elif old_meta != a.meta or old_address != node.address:
            self._events.append(MemberEvent(MemberEventKind.UPDATE, node.member()))

    def _on_suspect(self, s: Suspect, now: float, reply_to: Address | None) -> None:
        node = self._nodes.get(s.node)
        if node is None:
            return
        if s.incarnation < node.incarnation:
            if s.node == self._local_id:
                self._correct_stale_accusation(reply_to, now)
            return
        susp = self._suspicions.get(s.node)
        if susp is not None:
            if s.incarnation == node.incarnation:
                if susp.confirm(s.from_node, now):  # independent confirmation: pass it on
                    self._broadcasts.queue(s.node, encode(s))
                    # A late confirmation may pull the deadline into the past: keep
                    # room for the direct checks, a probe interval apart.
                    left = self.config.suspicion_checks - susp.checks_sent
                    if left > 0:
                        susp.deadline = max(susp.deadline, now + left * self.config.probe_interval)
                return
            # Suspected again at a newer incarnation: the node refuted our suspicion
            # (we missed its alive), so the old timer is void; start a fresh one.
            # (memberlist counts it as a confirmation of the stale suspicion and may
            # then declare dead a node that everybody else knows is alive.)
            del self._suspicions[s.node]
            node.status = ALIVE
        if node.status != ALIVE:
            return
        if s.node == self._local_id:
            if not self._leaving:
                self._refute(s.incarnation, reply_to, s.from_node)
            return
        self._broadcasts.queue(s.node, encode(s))
        node.incarnation, node.status, node.state_change = s.incarnation, SUSPECT, now
        cfg = self.config
        n = len(self._nodes)
        k = cfg.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_timeout = suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        self._suspicions[s.node] = Suspicion(
            s.from_node, k, min_timeout, cfg.suspicion_max_timeout_mult * min_timeout, now
        )
        self.counters["suspects_raised"] += 1

    def _next_check(self, susp: Suspicion) -> float:
        """When to send the suspect its next direct check (the last one a probe interval before expiry)."""
        left = self.config.suspicion_checks - susp.checks_sent
        if left <= 0:
            return math.inf
        return susp.deadline - left * self.config.probe_interval

    def _check_suspect(self, node_id: str, susp: Suspicion) -> None:
        """Tell the suspect directly that it is suspected: alive, it refutes (or re-sends its alive)."""
        susp.checks_sent += 1
        node = self._nodes.get(node_id)
        if node is not None and node.status == SUSPECT:
            self._send(node.address, [encode(Suspect(node.incarnation, node_id, self._local_id))])

    def _suspicion_expired(self, node_id: str, susp: Suspicion, now: float) -> None:
        del self._suspicions[node_id]
        node = self._nodes.get(node_id)
        if node is not None and node.status == SUSPECT and node.state_change == susp.start:
            logger.info("%s: marking %s as failed (%d confirmations)", self._local_id, node_id, susp.n)
            self._on_dead(Dead(node.incarnation, node_id, self._local_id), now, None)

    def _on_dead(self, d: Dead, now: float, reply_to: Address | None) -> None:
        node = self._nodes.get(d.node)
        if node is None:
            return
        if d.incarnation < node.incarnation:
            if d.node == self._local_id and not self._leaving:
                self._correct_stale_accusation(reply_to, now)
            return
        self._suspicions.pop(d.node, None)
        if node.status >= DEAD:
            return
        is_local = d.node == self._local_id
        if is_local and not self._leaving:
            self._refute(d.incarnation, reply_to, d.from_node)
            return
        self._broadcasts.queue(d.node, encode(d))
        node.incarnation, node.state_change = d.incarnation, now
        node.status = LEFT if d.is_left else DEAD
        if is_local:
            return
        member = node.member()
        if node.status == DEAD:
            if not self._failed and self._next_reconnect < now:  # the timer idled: restart it
                self._next_reconnect = now + self.config.reconnect_interval
            self._failed[d.node] = (member, now)
            self._events.append(MemberEvent(MemberEventKind.FAIL, member))
        else:
            self._failed.pop(d.node, None)
            self._events.append(MemberEvent(MemberEventKind.LEAVE, member))

    def _refute(self, accused: int, reply_to: Address | None, accuser: str | None = None) -> None:
        """Outrank an accusation about ourselves with a higher incarnation.

        Besides gossiping it, the new alive goes straight to the packet's sender and
        to the accuser: the one node sure to hold a suspicion timer about us.
        """
        inc = self._incarnation + 1
        if accused >= inc:
            inc = accused + 1
        self._incarnation = min(MAX_INCARNATION, inc)
        self._nodes[self._local_id].incarnation = self._incarnation
        self._awareness.apply_delta(1)
        alive = self._local_alive()
        self._broadcasts.queue(self._local_id, alive)
        if reply_to is not None:
            self._send(reply_to, [alive])
        accused_by = self._nodes.get(accuser) if accuser and accuser != self._local_id else None
        if accused_by is not None and accused_by.address != reply_to and accused_by.status <= SUSPECT:
            self._send(accused_by.address, [alive])
        self.counters["refutes"] += 1

    def _correct_stale_accusation(self, reply_to: Address | None, now: float) -> None:
        """Someone still gossips an accusation we already refuted: send it our current alive."""
        if reply_to is None:
            return
        last = self._corrected.get(reply_to)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._corrected[reply_to] = now
        self.counters["stale_notices"] += 1
        self._send(reply_to, [self._local_alive()])

    def _joined(self, node: NodeState) -> None:
        self._failed.pop(node.node_id, None)
        self._events.append(MemberEvent(MemberEventKind.JOIN, node.member()))
        if self._seeds:  # a gossip join found its first member: sync the full state with it
            self._seeds = []
            if self.config.push_pull_interval > 0:
                self._pp_requests.append(node.member())
        if self.config.greet_new_members and not self._leaving:
            self.counters["greetings"] += 1
            self._send(node.address, [self._local_alive()])

    def _notify_stale(self, node: NodeState, now: float) -> None:
        """Tell ``node`` directly what we believe about it, so it can refute (rate-limited)."""
        last = self._notified.get(node.node_id)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._notified[node.node_id] = now
        record: Message
        if node.status == DEAD:
            record = Dead(node.incarnation, node.node_id, self._local_id)
        elif node.status == LEFT:
            record = Dead(node.incarnation, node.node_id, node.node_id)
        elif node.status == SUSPECT:
            record = Suspect(node.incarnation, node.node_id, self._local_id)
        else:
            record = Alive(node.incarnation, node.node_id, node.host, node.port, node.meta)
        parts = [encode(record)]
        if not self._leaving:
            parts.append(self._local_alive())
        self.counters["stale_notices"] += 1
        self._send(node.address, parts, piggyback=False)

    # ------------------------------------------------------------------ gossip
    def _gossip(self, now: float) -> None:
        ttd = self.config.gossip_to_the_dead_time
        targets = self._random_nodes(
            self.config.gossip_nodes,
            lambda n: n.status <= SUSPECT or (n.status == DEAD and now - n.state_change <= ttd),
        )
        limit = self._budget - COMPOUND_HEADER_OVERHEAD
        for node in targets:
            msgs = self._broadcasts.get(COMPOUND_PART_OVERHEAD, limit, len(self._nodes))
            if not msgs:
                return
            self._emit(msgs[0] if len(msgs) == 1 else compound(msgs), node.address)

    def _reconnect(self, now: float) -> None:
        timeout = self.config.reconnect_timeout
        for node_id, (_, since) in list(self._failed.items()):
            if now - since > timeout:
                del self._failed[node_id]
        if self._failed and not self._leaving:
            member, _ = self._failed[self._rng.choice(list(self._failed))]
            self._pp_requests.append(member)

    def _send_join_pings(self) -> None:
        host, port = self._local_address()
        for addr in self._seeds:
            ping = encode(Ping(self._next_seq(), "", self._local_id, host, port))
            self._send(addr, [ping, self._local_alive()])

    # ------------------------------------------------------------------ helpers
    def _send(self, addr: Address, parts: list[bytes], piggyback: bool = True) -> None:
        """Queue a packet of ``parts``, filling the rest of it with pending broadcasts."""
        if piggyback and self._broadcasts:
            used = COMPOUND_HEADER_OVERHEAD + sum(COMPOUND_PART_OVERHEAD + len(p) for p in parts)
            parts = parts + self._broadcasts.get(COMPOUND_PART_OVERHEAD, self._budget - used, len(self._nodes))
        self._emit(parts[0] if len(parts) == 1 else compound(parts), addr)

    def _emit(self, payload: bytes, addr: Address) -> None:
        packet = self._keyring.encrypt(payload, self._label) if self._keyring else add_label(self._label, payload)
        self._out.append((packet, addr))
        self.counters["packets_sent"] += 1

    def _guarded(self, handler: Callable[..., None], *args: Any) -> None:
        """Run a message handler; a bug in it is logged and counted, never raised at the adapter."""
        try:
            handler(*args)
        except Exception:
            self.counters["handler_errors"] += 1
            logger.exception("gossip handler %s failed", getattr(handler, "__name__", handler))

    def _local_alive(self) -> bytes:
        me = self._nodes[self._local_id]
        return encode(Alive(self._incarnation, me.node_id, me.host, me.port, me.meta))

    def _local_address(self) -> Address:
        me = self._nodes[self._local_id]
        return (me.host, me.port)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _insert_probe(self, node_id: str) -> None:
        # At a random offset, so that new members are not all probed last.
        self._probe_list.append(node_id)
        offset = self._rng.randint(0, len(self._probe_list) - 1)
        self._probe_list[offset], self._probe_list[-1] = self._probe_list[-1], self._probe_list[offset]

    def _random_nodes(self, k: int, accept: Callable[[NodeState], bool]) -> list[NodeState]:
        """Up to ``k`` random other members for which ``accept`` is true (memberlist's kRandomNodes)."""
        ids = self._probe_list
        n = len(ids)
        if k <= 0 or n == 0:
            return []
        nodes = self._nodes
        if n < 3 * k:  # few nodes: be exhaustive
            candidates = [nodes[i] for i in ids if accept(nodes[i])]
            self._rng.shuffle(candidates)
            return candidates[:k]
        chosen: list[NodeState] = []
        seen: set[int] = set()
        randrange = self._rng.randrange
        for _ in range(3 * n):
            index = randrange(n)
            if index in seen:
                continue
            seen.add(index)
            node = nodes[ids[index]]
            if accept(node):
                chosen.append(node)
                if len(chosen) >= k:
                    break
        return chosen

    def _num_alive_others(self) -> int:
        return sum(1 for n in self._nodes.values() if n.status <= SUSPECT and n.node_id != self._local_id)

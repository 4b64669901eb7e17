"""GossipMembership: drives the sans-I/O Swim core on the node's loop and UDP socket.

Gossip datagrams share the node's UDP port with QUIC (first-byte demultiplexing).
Join and push-pull run as requests over the mutually authenticated QUIC
connection, so a node given only the cluster CA can join: the gossip keyring
travels with the exchange. In that automatic mode the first node makes a
random key and a joining node takes its seed's keyring; when two clusters meet,
exchanges install each other's keys and every node sends with the smallest key
it knows, so they converge on one. A member whose packet does not decrypt gets
an immediate key exchange over QUIC. With keys configured explicitly the keyring
never travels and the operator rotates it (``Node.keyring``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

from ..port import NodePort
from .base import Member, MembershipListener
from .codec import NodeStatus
from .config import SwimConfig
from .errors import GossipDecodeError, GossipDecryptError, KeyringError
from .exchange import decode_exchange, encode_exchange
from .keyring import Keyring
from .swim import Swim

logger = logging.getLogger(__name__)

APP_ID = "nodosum.membership"
STREAM = "push-pull"
JOIN_RETRY_MIN = 0.2
JOIN_RETRY_MAX = 5.0
MAX_AUTO_KEYS = 16  # keys kept by the automatic keyring when clusters meet


class GossipMembership:
    """Membership by SWIM gossip (loop thread only, like the Swim core it drives)."""

    shares_metadata = True

    def __init__(self, local: Member, config: SwimConfig, *, keyring: Keyring, share_keys: bool, label: bytes,
                 seeds: list[tuple[str, int]], port: NodePort, request_timeout: float,
                 on_joined: Callable[[], None], incarnation: int = 0) -> None:
        self.local = local
        self.config = config
        self.keyring = keyring
        self.share_keys = share_keys
        self.label = label
        self.seeds = list(seeds)
        self.port = port
        self.counters = port.counters
        self._send = port.send_datagram
        self.request_timeout = request_timeout
        self._on_joined = on_joined
        self._incarnation = incarnation
        self._loop = asyncio.get_running_loop()
        self._rng = random.Random()
        self.swim: Swim | None = None
        self._listener: MembershipListener | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._join_handle: asyncio.TimerHandle | None = None
        self._join_attempts = 0
        self.joined = False
        self._stopped = False
        self._healed: dict[str, float] = {}

    # -- Membership interface ----------------------------------------------------------
    def start(self, listener: MembershipListener) -> None:
        self._listener = listener
        self.swim = Swim(self.local, self.config, rng=self._rng, now=self._loop.time(), keyring=self.keyring,
                         label=self.label, incarnation=self._incarnation)
        if self.seeds:
            self._join_seeds()
        else:
            self._mark_joined()
        self._pump()

    def stop(self) -> None:
        self._stopped = True
        self._listener = None
        for handle in (self._timer, self._join_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._join_handle = None

    def members(self) -> list[Member]:
        assert self.swim is not None
        return self.swim.members()

    def is_member(self, node_id: str) -> bool:
        return self.swim is not None and self.swim.is_member(node_id)

    # -- join ------------------------------------------------------------------------
    def join(self, addresses: list[tuple[str, int]]) -> None:
        """Join (more) seeds by address; retried with backoff until one answers."""
        self.seeds = list(addresses)
        self._join_attempts = 0
        self._join_seeds()

    def _join_seeds(self) -> None:
        self._join_handle = None
        if self._stopped:
            return
        for address in self.seeds:
            fut: concurrent.futures.Future[str] = concurrent.futures.Future()
            fut.add_done_callback(functools.partial(self._seed_answered, address))
            self.port.connect(fut, address)
        self._join_attempts += 1
        delay = min(JOIN_RETRY_MAX, JOIN_RETRY_MIN * 2 ** min(self._join_attempts, 10))
        self._join_handle = self._loop.call_later(delay * (0.5 + self._rng.random()), self._retry_join)

    def _retry_join(self) -> None:
        self._join_handle = None
        if not self.joined:
            logger.info("%s: no seed answered yet (%s); retrying", self.local.node_id,
                        ", ".join(f"{h}:{p}" for h, p in self.seeds))
            self._join_seeds()

    def _seed_answered(self, address: tuple[str, int], fut: concurrent.futures.Future[str]) -> None:
        self._loop.call_soon(self._seed_connected, fut, address)

    def _seed_connected(self, fut: concurrent.futures.Future[str], address: tuple[str, int]) -> None:
        if self._stopped:
            return
        try:
            node_id = fut.result()
        except Exception as exc:  # NodeUnreachable and friends: logged, retried by the timer
            logger.debug("seed %s:%d not reachable: %s", *address, exc)
            return
        if node_id == self.local.node_id:
            return
        self.push_pull(node_id, address, join=True)

    def _mark_joined(self) -> None:
        if not self.joined:
            self.joined = True
            if self._join_handle is not None:
                self._join_handle.cancel()
                self._join_handle = None
            self._on_joined()

    # -- push-pull over QUIC -------------------------------------------------------------
    def _keys_to_share(self, join: bool = False) -> list[bytes]:
        # A joining node sends no keys: the cluster keeps its key instead of taking the newcomer's.
        return self.keyring.keys if self.share_keys and not join else []

    def push_pull(self, node_id: str, address: tuple[str, int], join: bool = False) -> None:
        """Exchange full state (and keys) with one node."""
        assert self.swim is not None
        payload = encode_exchange(self._seal(self.swim.local_state(join)),
                                  self._keys_to_share(join and not self.joined), join)
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        fut.add_done_callback(lambda f: self._loop.call_soon(self._push_pull_done, f, node_id, join))
        self.port.request(fut, node_id, APP_ID, STREAM, payload, self.request_timeout, address)

    def _push_pull_done(self, fut: concurrent.futures.Future[bytes], node_id: str, join: bool) -> None:
        if self._stopped or self.swim is None:
            return
        try:
            reply = fut.result()
        except Exception as exc:  # unreachable / timeout / remote error: counted, retried by SWIM
            self.counters.inc("push_pull_failures")
            logger.debug("push-pull with %s failed: %s", node_id, exc)
            return
        try:
            self._merge(reply, adopt=join and not self.joined)
        except GossipDecodeError as exc:
            self.counters.inc("push_pull_failures")
            logger.warning("bad push-pull reply from %s: %s", node_id, exc)
            return
        if join:
            logger.info("%s joined the cluster through %s", self.local.node_id, node_id)
            self._mark_joined()
        self._pump()

    def handle_push_pull(self, payload: bytes, sender: str) -> bytes:
        """Inline request handler: merge the peer's state and keys, answer with ours."""
        assert self.swim is not None
        self._merge(payload)
        reply = encode_exchange(self._seal(self.swim.local_state()), self._keys_to_share(), False)
        self._loop.call_soon(self._pump)
        return reply

    def _merge(self, payload: bytes, adopt: bool = False) -> None:
        assert self.swim is not None
        state, keys, _ = decode_exchange(payload)
        if keys and self.share_keys:
            self._merge_keys(keys, adopt)
        self.swim.merge_remote_state(self._open(state), self._loop.time())

    def _seal(self, state: bytes) -> bytes:
        """With operator-managed keys the state travels encrypted, so a node with the wrong
        gossip key cannot join even though its certificate is good."""
        return state if self.share_keys else self.keyring.encrypt(state, self.label)

    def _open(self, state: bytes) -> bytes:
        if self.share_keys:
            return state
        try:
            return self.keyring.decrypt(state, self.label)
        except GossipDecryptError as exc:
            self.counters.inc("push_pull_refused_key")
            raise GossipDecodeError(f"push-pull state not sealed with our gossip key: {exc}") from None

    def _merge_keys(self, keys: list[bytes], adopt: bool) -> None:
        """Automatic keyring: a joining node takes its seed's keyring in place of its own
        random key; afterwards every exchange installs the peer's keys (so its packets
        decrypt) and all nodes send with the smallest key they know, which converges."""
        ring = self.keyring
        try:
            old = ring.keys
            ring.merge(keys)
            if adopt:
                ring.use(min(keys))
                for key in old:
                    if key not in keys:
                        ring.remove(key)
            else:
                ring.use(min(ring.keys))
                for key in sorted(ring.keys, reverse=True)[: max(0, len(ring.keys) - MAX_AUTO_KEYS)]:
                    ring.remove(key)  # never the smallest, which is the primary
            if ring.primary_key != old[0]:
                logger.info("%s now sends gossip with the cluster's key", self.local.node_id)
        except KeyringError as exc:
            self.counters.inc("push_pull_failures")
            logger.warning("keys from a push-pull refused: %s", exc)

    # -- gossip packets and timers ---------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """A non-QUIC datagram on the node's port: a gossip packet (or garbage)."""
        if self.swim is None or self._stopped:
            self.counters.inc("datagrams_dropped")
            return
        swim = self.swim
        before = swim.dropped
        undecryptable = swim.counters["decrypt_errors"]
        swim.receive(data, addr, self._loop.time())
        if swim.dropped != before:
            self.counters.inc("gossip_packets_dropped")
            if self.share_keys and swim.counters["decrypt_errors"] != undecryptable:
                self._heal_keys(addr)
        self._pump()

    def _heal_keys(self, addr: tuple[str, int]) -> None:
        """A member's packet did not decrypt: it has a key we lack. Exchange keys with it over
        QUIC (authenticated), at most once per second per member. Strangers are ignored."""
        assert self.swim is not None
        now = self._loop.time()
        for member in self.swim.members():
            if member.address == addr and member.node_id != self.local.node_id:
                if now - self._healed.get(member.node_id, -1e9) >= 1.0:
                    self._healed[member.node_id] = now
                    self.counters.inc("gossip_key_heals")
                    self.push_pull(member.node_id, member.address)
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.swim is not None and not self._stopped:
            self.swim.tick(self._loop.time())
            self._pump()

    def _pump(self) -> None:
        """Send what Swim queued, deliver its events, start push-pulls, re-arm the timer."""
        swim = self.swim
        if swim is None or self._stopped:
            return
        for data, addr in swim.outgoing():
            self._send(data, addr)
        events = swim.events()
        if events and self._listener is not None:
            for event in events:
                self._listener(event)
        for member in swim.push_pull_requests():
            self.push_pull(member.node_id, member.address)
        deadline = swim.next_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    # -- leaving and metadata -------------------------------------------------------------------
    async def leave(self, timeout: float) -> None:
        """Announce a graceful leave and keep gossiping until it has spread (or ``timeout``)."""
        swim = self.swim
        if swim is None or self._stopped:
            return
        swim.leave(self._loop.time())
        self._pump()
        deadline = self._loop.time() + timeout
        while not swim.leave_complete and self._loop.time() < deadline:
            await asyncio.sleep(min(self.config.gossip_interval, max(0.0, deadline - self._loop.time())))
            swim.tick(self._loop.time())
            self._pump()

    def update_meta(self, meta: dict[str, Any]) -> None:
        assert self.swim is not None
        self.swim.update_meta(meta, self._loop.time())
        self._pump()

    def stats(self) -> dict[str, int]:
        if self.swim is None:
            return {}
        stats = {f"gossip_{k}": v for k, v in self.swim.stats.items()}
        for status in NodeStatus:
            stats[f"members_{status.name.lower()}"] = 0
        for state in self.swim.member_states():
            stats[f"members_{state.status.name.lower()}"] += 1
        return stats

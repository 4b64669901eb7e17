"""The rebalancer: moving keys when members change, and the maintenance thread.

When the member list changes, :func:`handoff_plan` works out what this node must send where;
the rebalancer delivers it (buckets first: a new member may not know them) and drops a key it
no longer holds only once its new holders acknowledged it. What could not be delivered is
swept again later. A member whose cache restarted empty without anyone noticing (no member
event) is handed back its share.

The maintenance thread runs periodic :class:`Task` s — expiry, purges after a clear, bucket
exchanges, sweeps, hand-backs, hint replay — each isolated: an exception in one is logged and
counted and the thread keeps going. Work that must not wait for the next tick calls ``wake``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodosum import MemberEvent, MemberEventKind

from .buckets import SYNC_INTERVAL
from .placement import Placement
from .protocol import Record
from .remote import Remote
from .replication import Replicator
from .store import LocalStore

if TYPE_CHECKING:
    from .buckets import BucketCatalog
    from .context import CacheContext

logger = logging.getLogger(__name__)

MAINTENANCE_TICK = 1.0  # seconds between two looks at the task list
SWEEP_INTERVAL = 5.0  # seconds before retrying an incomplete handoff
HANDBACK_ATTEMPTS = 8  # tries to give a restarted member its keys (1 s apart, doubling, at most 30 s)

Drop = tuple[str, str, tuple[str, ...]]  # bucket, key, the holders that must acknowledge it first


def handoff_plan(store: LocalStore, node_id: str, old: Placement, new: Placement, replicas: int,
                 now: float) -> tuple[dict[str, list[Record]], list[Drop]]:
    """What this node must send where after a membership change, and what it may then drop.

    A key whose replica set gained members is sent to the new ones by one holder only: the
    first member of the old set that is still a member (so each key travels once). A key
    this node no longer owns is sent to every new replica and dropped after they acknowledge.
    """
    sends: dict[str, list[Record]] = defaultdict(list)
    drops: list[Drop] = []
    members = set(new.members)
    for spec in store.buckets():
        cleared = store.cleared(spec.name)
        for key, entry in store.items(spec.name):
            ttl = store.remaining_ttl(entry, now)
            if (ttl is not None and ttl <= 0) or entry.version <= cleared:
                continue  # expired, or cleared and not purged yet
            record = Record(spec.name, key, entry.data, entry.version, ttl)
            new_set = new.replicas(spec.name, key, replicas)
            if node_id not in new_set:
                for target in new_set:
                    sends[target].append(record)
                drops.append((spec.name, key, tuple(new_set)))
                continue
            old_set = old.replicas(spec.name, key, replicas)
            holders = [n for n in old_set if n in members]
            if holders and holders[0] != node_id:
                continue
            for target in new_set:
                if target != node_id and target not in old_set:
                    sends[target].append(record)
    return sends, drops


@dataclass
class Task:
    """A periodic job of the maintenance thread."""

    name: str
    interval: float
    run: Callable[[], None]
    due: float = 0.0


class Rebalancer:
    """Hands keys to their new holders, and runs the maintenance thread."""

    def __init__(self, ctx: CacheContext, remote: Remote, replicator: Replicator, catalog: BucketCatalog) -> None:
        self.ctx = ctx
        self.remote = remote
        self.replicator = replicator
        self.catalog = catalog
        self._lock = threading.Lock()  # one handoff at a time; guards _owned
        self._owned = Placement(ctx.app.nodes())  # as of the last rebalance: what this node's keys follow
        self._sweep_due: float | None = None
        # members whose cache (re)started empty, to be given their keys: node id -> (attempts, due)
        self._handbacks: dict[str, tuple[int, float]] = {}
        self._handbacks_lock = threading.Lock()
        self._wake = threading.Event()
        self.tasks = [
            Task("expiry", MAINTENANCE_TICK, self._expire),
            Task("purge after a clear", 0.0, catalog.purge_due),
            Task("bucket exchange with members that missed a clear", MAINTENANCE_TICK, catalog.resync),
            Task("sweep", MAINTENANCE_TICK, self._sweep),
            Task("hand-back", MAINTENANCE_TICK, self._hand_back_due),
            Task("hint replay", MAINTENANCE_TICK, self._replay_hints),  # after the resync: it carries the clears
            Task("bucket exchange with a random member", SYNC_INTERVAL, catalog.sync_random,
                 due=time.monotonic() + SYNC_INTERVAL),
        ]
        catalog.wake = self.wake
        self._thread = threading.Thread(target=self._maintain, name=f"mycel-{ctx.node_id}-maintenance", daemon=True)

    def start(self) -> None:
        self.ctx.node.on_member_event(self.on_member_event)
        self._thread.start()

    def wake(self) -> None:
        """Run the maintenance tasks that are due now rather than at the next tick."""
        self._wake.set()

    # -- membership ---------------------------------------------------------------------------------
    def on_member_event(self, event: MemberEvent) -> None:
        if self.ctx.closed.is_set():
            return
        if event.kind is MemberEventKind.JOIN:
            self.catalog.sync([event.member.node_id])
        self.rebalance()

    def rebalance(self) -> int:
        """Hand keys whose replica set changed to their new holders; returns keys sent."""
        with self._lock:
            old = self._owned
            new = Placement(self.ctx.app.nodes())
            if old == new:
                return 0
            self._owned = new
            return self._handoff(old, new)

    def _handoff(self, old: Placement, new: Placement) -> int:
        """Send what changed holders between ``old`` and ``new`` (lock held); returns keys sent."""
        store = self.ctx.store
        sends, drops = handoff_plan(store, self.ctx.node_id, old, new, self.ctx.settings.replicas, time.monotonic())
        if not sends:
            return 0
        complete = self._deliver(sends)
        if len(complete) < len(sends):
            self._sweep_due = time.monotonic() + SWEEP_INTERVAL
        for bucket, key, targets in drops:
            if all(t in complete for t in targets):
                store.remove(bucket, key)
        sent = sum(len(records) for target, records in sends.items() if target in complete)
        self.ctx.counters.inc("handoff_keys", sent)
        logger.info("handoff: %d keys sent to %d nodes", sent, len(complete))
        return sent

    def _deliver(self, sends: dict[str, list[Record]]) -> Collection[str]:
        """Send handoff batches (with our buckets first: a new member may not know them);
        returns the nodes that acknowledged everything."""
        self.remote.run(self.catalog.exchange(sends))
        complete = set()
        for target, records in sends.items():
            sent, stopped = self.remote.deliver(self.ctx.app, target, records, self.ctx.settings.remote_timeout)
            if stopped is None:
                complete.add(target)
            else:
                logger.info("handoff of %d keys to %s stopped: %s", len(records) - sent, target, stopped)
        return complete

    # -- hand-back to a member whose cache restarted empty ----------------------------------------
    def request_hand_back(self, node_id: str) -> None:
        """Give ``node_id`` its keys soon (from the loop thread: the maintenance thread sends them)."""
        with self._handbacks_lock:
            self._handbacks[node_id] = (0, 0.0)
        self.wake()

    def _hand_back_due(self) -> None:
        """Run the hand-backs that are due; a failed one is retried with backoff, a few times."""
        now = time.monotonic()
        with self._handbacks_lock:
            due = [(n, attempts) for n, (attempts, at) in self._handbacks.items() if at <= now]
            for node_id, _ in due:
                del self._handbacks[node_id]
        for node_id, attempts in due:
            if self._hand_back(node_id) is not None:
                continue
            if attempts + 1 >= HANDBACK_ATTEMPTS:
                self.ctx.counters.inc("handbacks_abandoned")
                logger.warning("gave up handing keys back to %s after %d attempts", node_id, attempts + 1)
                continue
            with self._handbacks_lock:
                self._handbacks.setdefault(node_id, (attempts + 1, now + min(30.0, 2.0 ** attempts)))

    def _hand_back(self, node_id: str) -> int | None:
        """Send ``node_id`` the keys it holds a replica of, as if it had just joined.

        For a member whose cache started empty while this node already counted it among the
        key holders (a quick restart raises no member event). Only when the current placement
        includes it: otherwise the rebalance on its join sends the keys. Returns the keys sent,
        None if it did not acknowledge them."""
        with self._lock:
            current = self._owned
            if node_id not in current.members:
                return 0
            without = Placement([m for m in current.members if m != node_id])
            sends, _ = handoff_plan(self.ctx.store, self.ctx.node_id, without, current, self.ctx.settings.replicas,
                                    time.monotonic())
            records = sends.get(node_id)
            if not records:
                return 0
            if node_id not in self._deliver({node_id: records}):
                return None
        self.ctx.counters.inc("handback_keys", len(records))
        logger.info("handed %d keys back to %s, whose cache started empty", len(records), node_id)
        return len(records)

    # -- maintenance --------------------------------------------------------------------------------
    def _maintain(self) -> None:
        closed = self.ctx.closed
        while not closed.is_set():
            self._wake.wait(MAINTENANCE_TICK)
            self._wake.clear()
            if closed.is_set():
                return
            now = time.monotonic()
            for task in self.tasks:
                if task.due <= now:
                    task.due = now + task.interval
                    self._run(task)

    def _run(self, task: Task) -> None:
        try:
            task.run()
        except Exception:  # a bug must not end expiry, sweeps and hint replay with it
            self.ctx.counters.inc("maintenance_errors")
            logger.exception("cache maintenance task %r failed; it runs again in %.0f s", task.name, task.interval)

    def _expire(self) -> None:
        self.ctx.store.expire()

    def _sweep(self) -> None:
        if self._sweep_due is not None and time.monotonic() >= self._sweep_due:
            self._sweep_due = None
            with self._lock:
                # keys a failed handoff left here: send them on and drop them
                self._handoff(self._owned, self._owned)

    def _replay_hints(self) -> None:
        if len(self.ctx.hints):
            self.ctx.counters.inc("hints_replayed", self.replicator.replay_hints(set(self.ctx.app.nodes())))

    # -- life cycle -------------------------------------------------------------------------------------
    def close(self, handoff: bool) -> None:
        """Stop maintenance; with ``handoff`` first give this node's keys to the remaining members."""
        self.ctx.closed.set()
        self._wake.set()
        if handoff:
            members = self.ctx.others()
            if members:
                with self._lock:
                    self._handoff(Placement(self.ctx.app.nodes()), Placement(members))
        self._thread.join(MAINTENANCE_TICK * 5)

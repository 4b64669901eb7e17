"""Replicated writes with a quorum, hinted handoff, and rebalance when members change.

Everything here talks to other nodes only through nodosum's Application API.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable

from nodosum import Application, NodeUnreachable, NodosumError

from .errors import QuorumNotReached
from .placement import Placement
from .protocol import ApplyRequest, ApplyResponse, ErrorResponse, Op, Record, decode_response, encode_request
from .store import LocalStore

logger = logging.getLogger(__name__)

MAX_HINTS = 100_000
HANDOFF_BATCH = 500
LINGER_MIN = 0.005  # seconds a write waits for replicas beyond its quorum ...
LINGER_MAX = 0.25  # ... at least and at most


def quorum_size(policy: str | int, replicas: int) -> int:
    """How many of ``replicas`` acknowledgements a write needs under ``policy``."""
    if replicas <= 0:
        return 0
    if policy == "majority":
        return replicas // 2 + 1
    if policy == "all":
        return replicas
    if policy == "one":
        return 1
    if isinstance(policy, int) and not isinstance(policy, bool) and policy >= 1:
        return min(policy, replicas)
    raise ValueError(f"write quorum must be 'majority', 'all', 'one' or an int >= 1, not {policy!r}")


class Hints:
    """Writes a replica missed, kept by the coordinator to replay when it answers again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = MAX_HINTS) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._limit = limit
        self._hints: OrderedDict[tuple[str, str, str], tuple[Record, float]] = OrderedDict()
        self.dropped = 0

    def add(self, node_id: str, record: Record) -> None:
        with self._lock:
            key = (node_id, record.bucket, record.key)
            old = self._hints.pop(key, None)
            if old is None or old[0].version < record.version:
                self._hints[key] = (record, self._clock())
            else:
                self._hints[key] = old
            while len(self._hints) > self._limit:
                self._hints.popitem(last=False)
                self.dropped += 1

    def take(self) -> dict[str, list[Record]]:
        """Remove and return every live hint by node, with TTLs shortened by their age."""
        now = self._clock()
        by_node: dict[str, list[Record]] = defaultdict(list)
        with self._lock:
            hints, self._hints = self._hints, OrderedDict()
        for (node_id, _, _), (record, since) in hints.items():
            if record.ttl is not None:
                remaining = record.ttl - (now - since)
                if remaining <= 0:
                    continue
                record = Record(record.bucket, record.key, record.data, record.version, remaining)
            by_node[node_id].append(record)
        return by_node

    def __len__(self) -> int:
        return len(self._hints)


class Replicator:
    """Sends records to their replicas and counts acknowledgements."""

    def __init__(self, app: Application, store: LocalStore, node_id: str, hints: Hints, *,
                 timeout: float, apply_local: Callable[[Record], tuple[bool, bool]]) -> None:
        self.app = app
        self.store = store
        self.node_id = node_id
        self.hints = hints
        self.timeout = timeout
        self.apply_local = apply_local

    def send(self, node_id: str, records: list[Record], timeout: float | None = None
             ) -> concurrent.futures.Future[bytes]:
        return self.app.request_future(encode_request(ApplyRequest(records)), node_id,
                                       self.timeout if timeout is None else timeout)

    def write(self, groups: dict[tuple[str, ...], list[Record]], quorum: Callable[[int], int]
              ) -> list[tuple[bool, bool]]:
        """Write each group of records to its replica set; returns (applied, existed) per record
        in input order. Raises QuorumNotReached if any record lacks its quorum."""
        by_node: dict[str, list[int]] = defaultdict(list)
        flat: list[Record] = []
        needed: list[int] = []
        sets: list[tuple[str, ...]] = []
        for replica_set, records in groups.items():
            for record in records:
                index = len(flat)
                flat.append(record)
                needed.append(quorum(len(replica_set)))
                sets.append(replica_set)
                for node_id in replica_set:
                    by_node[node_id].append(index)
        acks = [0] * len(flat)
        existed = [False] * len(flat)
        applied = [False] * len(flat)
        futures: dict[concurrent.futures.Future[bytes], str] = {}
        for node_id, indexes in by_node.items():
            if node_id == self.node_id:
                continue
            try:
                futures[self.send(node_id, [flat[i] for i in indexes])] = node_id
            except NodosumError as exc:
                logger.debug("cannot send to %s: %s", node_id, exc)
                self._hint(node_id, [flat[i] for i in indexes])
        for i in by_node.get(self.node_id, ()):
            was_applied, was_there = self.apply_local(flat[i])
            acks[i] += 1
            applied[i] = applied[i] or was_applied
            existed[i] = existed[i] or was_there
        started = time.monotonic()
        deadline = started + self.timeout + 0.5
        pending = set(futures)
        lingering = False
        while pending:
            if not lingering and all(a >= n for a, n in zip(acks, needed)):
                # Quorum met. Give the other replicas a moment too (as long again as the
                # quorum took, within bounds), so that in a healthy cluster every replica
                # has the write when put() returns; a dead replica delays it only briefly.
                lingering = True
                deadline = min(deadline, time.monotonic() + min(LINGER_MAX, max(LINGER_MIN, time.monotonic() - started)))
            done, pending = concurrent.futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                self._count(fut, futures[fut], by_node[futures[fut]], flat, acks, applied, existed)
        for fut in pending:  # the quorum is met (or time is up): settle stragglers in the background
            node_id = futures[fut]
            fut.add_done_callback(functools.partial(self._late, node_id=node_id,
                                                    records=[flat[i] for i in by_node[node_id]]))
        for i in range(len(flat)):
            if acks[i] < needed[i]:
                raise QuorumNotReached(acks[i], needed[i], len(sets[i]))
        return list(zip(applied, existed))

    def _count(self, fut: concurrent.futures.Future[bytes], node_id: str, indexes: list[int],
               flat: list[Record], acks: list[int], applied: list[bool], existed: list[bool]) -> None:
        response = self._response(fut, node_id, [flat[i] for i in indexes])
        if response is None:
            return
        for i, (was_applied, was_there) in zip(indexes, response.results):
            acks[i] += 1
            applied[i] = applied[i] or was_applied
            existed[i] = existed[i] or was_there

    def _late(self, fut: concurrent.futures.Future[bytes], node_id: str, records: list[Record]) -> None:
        self._response(fut, node_id, records)

    def _response(self, fut: concurrent.futures.Future[bytes], node_id: str,
                  records: list[Record]) -> ApplyResponse | None:
        try:
            response = decode_response(Op.APPLY, fut.result(0))
        except (NodosumError, concurrent.futures.CancelledError, TimeoutError) as exc:
            logger.debug("replica %s missed %d writes: %s", node_id, len(records), exc)
            self._hint(node_id, records)
            return None
        if isinstance(response, ErrorResponse):
            logger.warning("replica %s refused %d writes: %s", node_id, len(records), response.message)
            self._hint(node_id, records)
            return None
        assert isinstance(response, ApplyResponse)
        return response

    def _hint(self, node_id: str, records: Iterable[Record]) -> None:
        for record in records:
            self.hints.add(node_id, record)

    def replay_hints(self, members: set[str]) -> int:
        """Resend missed writes to members; returns how many were delivered."""
        delivered = 0
        for node_id, records in self.hints.take().items():
            if node_id not in members:
                continue  # gone: rebalance, not hints, moves its keys
            for start in range(0, len(records), HANDOFF_BATCH):
                batch = records[start:start + HANDOFF_BATCH]
                try:
                    response = decode_response(Op.APPLY, self.send(node_id, batch).result(self.timeout + 1))
                except (NodosumError, TimeoutError, concurrent.futures.TimeoutError):
                    self._hint(node_id, records[start:])
                    break
                if isinstance(response, ErrorResponse):
                    self._hint(node_id, records[start:])
                    break
                delivered += len(batch)
        return delivered


def handoff_plan(store: LocalStore, node_id: str, old: Placement, new: Placement, replicas: int,
                 now: float) -> tuple[dict[str, list[Record]], list[tuple[str, str, tuple[str, ...]]]]:
    """What this node must send where after a membership change, and what it may then drop.

    A key whose replica set gained members is sent to the new ones by one holder only: the
    first member of the old set that is still a member (so each key travels once). A key
    this node no longer owns is sent to every new replica and dropped after they acknowledge.
    """
    sends: dict[str, list[Record]] = defaultdict(list)
    drops: list[tuple[str, str, tuple[str, ...]]] = []
    members = set(new.members)
    for spec in store.buckets():
        for key, entry in store.items(spec.name):
            ttl = store.remaining_ttl(entry, now)
            if ttl is not None and ttl <= 0:
                continue
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


def deliver_handoff(replicator: Replicator, sends: dict[str, list[Record]]) -> set[str]:
    """Send handoff batches; returns the nodes that acknowledged everything sent to them."""
    complete: set[str] = set()
    for target, records in sends.items():
        ok = True
        for start in range(0, len(records), HANDOFF_BATCH):
            batch = records[start:start + HANDOFF_BATCH]
            try:
                response = decode_response(Op.APPLY, replicator.send(target, batch).result(replicator.timeout + 1))
            except (NodeUnreachable, NodosumError, TimeoutError, concurrent.futures.TimeoutError) as exc:
                logger.info("handoff of %d keys to %s failed: %s", len(records) - start, target, exc)
                ok = False
                break
            if isinstance(response, ErrorResponse):
                logger.warning("handoff to %s refused: %s", target, response.message)
                ok = False
                break
        if ok:
            complete.add(target)
    return complete

"""Replicated writes with a quorum, and the hints that remember what a replica missed.

A write is a step generator (see mycel/remote.py): it sends each node its records, applies
this node's share, waits for the quorum and briefly for the other replicas, and leaves the
stragglers to settle in the background. Everything here talks to other nodes only through
nodosum's Application API.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import QuorumNotReached
from .protocol import ApplyRequest, ApplyResponse, ErrorResponse, Op, Record, encode_request
from .remote import FAILURES, CallFailed, Outcome, Remote, Steps, Wait, batches

if TYPE_CHECKING:
    from .context import CacheContext

logger = logging.getLogger(__name__)

MAX_HINTS = 100_000
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

    def add_all(self, node_id: str, records: Iterable[Record]) -> None:
        for record in records:
            self.add(node_id, record)

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

    def __init__(self, ctx: CacheContext, remote: Remote) -> None:
        self.ctx = ctx
        self.remote = remote
        self.hints = ctx.hints

    @property
    def timeout(self) -> float:
        return self.ctx.settings.remote_timeout

    def send(self, node_id: str, records: list[Record]) -> concurrent.futures.Future[bytes]:
        """Start an APPLY of ``records`` on ``node_id`` (the caller keeps it within one batch)."""
        return self.ctx.app.request_future(encode_request(ApplyRequest(records)), node_id, self.timeout)

    def write(self, groups: dict[tuple[str, ...], list[Record]]) -> Steps[list[tuple[bool, bool]]]:
        """Write each group of records to its replica set; returns (applied, existed) per record
        in input order. Raises QuorumNotReached naming every record that lacks its quorum."""
        me = self.ctx.node_id
        by_node: dict[str, list[int]] = defaultdict(list)
        flat: list[Record] = []
        needed: list[int] = []
        sets: list[tuple[str, ...]] = []
        for replica_set, records in groups.items():
            quorum = self.ctx.write_quorum(len(replica_set))
            for record in records:
                index = len(flat)
                flat.append(record)
                needed.append(quorum)
                sets.append(replica_set)
                for node_id in replica_set:
                    by_node[node_id].append(index)
        acks = [0] * len(flat)
        existed = [False] * len(flat)
        applied = [False] * len(flat)
        unknown = [False] * len(flat)  # sent to a replica that may have applied it without saying so
        missed: list[tuple[str, list[int]]] = []  # replicas that did not acknowledge, hinted at the end
        futures: dict[concurrent.futures.Future[bytes], tuple[str, list[int]]] = {}
        for node_id, indexes in by_node.items():
            if node_id == me:
                continue
            start = 0
            for batch in batches([flat[i] for i in indexes]):
                part = indexes[start:start + len(batch)]
                start += len(batch)
                try:
                    futures[self.send(node_id, batch)] = (node_id, part)
                except FAILURES as exc:
                    logger.debug("cannot send to %s: %s", node_id, self.remote.failure(exc, node_id))
                    missed.append((node_id, part))
        for i in by_node.get(me, ()):
            was_applied, was_there = self.ctx.apply_local(flat[i])
            acks[i] += 1
            applied[i] = applied[i] or was_applied
            existed[i] = existed[i] or was_there
        started = time.monotonic()
        deadline = started + self.timeout + 0.5
        pending = set(futures)
        lingering = False
        while pending:
            if not lingering and all(a >= n for a, n in zip(acks, needed, strict=True)):
                # Quorum met. Give the other replicas a moment too (as long again as the
                # quorum took, within bounds), so that in a healthy cluster every replica
                # has the write when put() returns; a dead replica delays it only briefly.
                lingering = True
                linger = min(LINGER_MAX, max(LINGER_MIN, time.monotonic() - started))
                deadline = min(deadline, time.monotonic() + linger)
            done, pending = yield Wait(pending, deadline - time.monotonic())
            if not done:
                break
            for fut in done:
                node_id, part = futures[fut]
                try:
                    response = self._acknowledged(node_id, fut)
                except CallFailed as call_failed:
                    missed.append((node_id, part))
                    if call_failed.outcome is Outcome.UNKNOWN:
                        for i in part:
                            unknown[i] = True
                    continue
                for i, (was_applied, was_there) in zip(part, response.results, strict=False):
                    acks[i] += 1
                    applied[i] = applied[i] or was_applied
                    existed[i] = existed[i] or was_there
        for fut in pending:  # the quorum is met (or time is up): settle stragglers in the background
            node_id, part = futures[fut]
            for i in part:
                unknown[i] = True
            fut.add_done_callback(functools.partial(self._late, node_id=node_id, records=[flat[i] for i in part]))
        failed = [i for i in range(len(flat)) if acks[i] < needed[i]]
        # A write reported as certainly not applied must not be replayed later either.
        doomed = {i for i in failed if acks[i] == 0 and not unknown[i]}
        for node_id, part in missed:
            self.hints.add_all(node_id, (flat[i] for i in part if i not in doomed))
        if failed:
            raise _quorum_error(flat, failed, acks, needed, sets, maybe_applied=len(doomed) < len(failed))
        return list(zip(applied, existed, strict=True))

    def _acknowledged(self, node_id: str, fut: concurrent.futures.Future[bytes]) -> ApplyResponse:
        response = self.remote.result(Op.APPLY, node_id, fut)
        if isinstance(response, ErrorResponse):
            logger.warning("replica %s refused writes: %s", node_id, response.message)
            raise CallFailed(Outcome.REFUSED, node_id, response.message)
        assert isinstance(response, ApplyResponse)
        return response

    def _late(self, fut: concurrent.futures.Future[bytes], node_id: str, records: list[Record]) -> None:
        try:
            self._acknowledged(node_id, fut)
        except CallFailed as call_failed:
            logger.debug("replica %s missed %d writes: %s", node_id, len(records), call_failed)
            self.hints.add_all(node_id, records)

    def replay_hints(self, members: set[str]) -> int:
        """Resend missed writes to members; returns how many were delivered."""
        delivered = 0
        store = self.ctx.store
        for node_id, records in self.hints.take().items():
            if node_id not in members:
                continue  # gone: rebalance, not hints, moves its keys
            records = [r for r in records if store.has_bucket(r.bucket) and r.version > store.cleared(r.bucket)]
            sent, stopped = self.remote.deliver(self.ctx.app, node_id, records, self.timeout)
            delivered += sent
            if stopped is not None:
                logger.debug("hint replay to %s stopped after %d of %d: %s", node_id, sent, len(records), stopped)
                self.hints.add_all(node_id, records[sent:])
        return delivered


def _quorum_error(flat: list[Record], failed: list[int], acks: list[int], needed: list[int],
                  sets: list[tuple[str, ...]], maybe_applied: bool) -> QuorumNotReached:
    worst = min(failed, key=lambda i: acks[i] - needed[i])
    acked, need, replicas = acks[worst], needed[worst], len(sets[worst])
    message = None
    if len(flat) > 1:
        message = (f"quorum not reached for {len(failed)} of {len(flat)} keys (e.g. {flat[worst].key!r}: "
                   f"{acked} of {replicas} replicas acknowledged, {need} needed)")
    return QuorumNotReached(acked, need, replicas, message, failed_keys=[flat[i].key for i in failed],
                            maybe_applied=maybe_applied)

"""The client role: every cache operation that may leave this node, written once as steps.

Each method returns a step generator (mycel/remote.py) that :class:`~mycel.cache.Cache` runs
blocking and :class:`~mycel.aio.AsyncCache` awaits. The local fast paths (a hit on a key this
node holds) stay in those two classes, so that a hit costs no generator at all.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import CacheTimeout, QuorumNotReached, ValueTooLarge
from .protocol import (
    ErrorResponse,
    GetRequest,
    GetResponse,
    Op,
    Record,
    Response,
    encode_request,
    encode_response,
)
from .remote import FAILURES, Call, CallFailed, Outcome, Remote, Steps, Wait
from .replication import Replicator, quorum_size
from .store import BucketSpec, Entry

if TYPE_CHECKING:
    from .buckets import BucketCatalog
    from .context import CacheContext
    from .server import CacheServer, PrimaryRequest

logger = logging.getLogger(__name__)


class Client:
    """The operations of one Cache that may involve other nodes."""

    def __init__(self, ctx: CacheContext, remote: Remote, replicator: Replicator, catalog: BucketCatalog,
                 server: CacheServer) -> None:
        self.ctx = ctx
        self.remote = remote
        self.replicator = replicator
        self.catalog = catalog
        self.server = server

    # -- reads ------------------------------------------------------------------------------------
    def read(self, bucket: str, key: str) -> Steps[Record | None]:
        """The newest record of ``key`` this read policy finds (None: not found)."""
        check_key(key)
        yield from self.catalog.spec(bucket)
        if self.ctx.settings.read_quorum != 1:
            return (yield from self._read_quorum(bucket, key))
        entry = self.ctx.store.get(bucket, key)  # the bucket may have been unknown a moment ago
        if entry is not None:
            return record_of(bucket, key, entry, self.ctx.store.remaining_ttl(entry))
        return (yield from self.read_remote(bucket, key))

    def read_remote(self, bucket: str, key: str) -> Steps[Record | None]:
        ctx = self.ctx
        replica_set = ctx.replica_set(bucket, key)
        # Ask the primary (or, when this node is the primary and misses the key, the next
        # replica: with a majority write quorum one of the others has every acknowledged write).
        candidates = [n for n in replica_set if n != ctx.node_id]
        if not candidates:
            return None
        payload = encode_request(GetRequest(bucket, [key]))
        last_failure: CallFailed | None = None
        for node_id in candidates:
            try:
                response: Response = yield Call(ctx.app, Op.GET, payload, node_id, ctx.settings.remote_timeout)
            except CallFailed as failed:
                ctx.counters.inc("read_fallbacks")
                last_failure = failed
                continue
            record = self._first_record(response)
            if record is not None and ctx.node_id in replica_set:
                ctx.apply_local(record)  # read repair: this replica missed the write
            return record
        raise CacheTimeout(f"no replica of {bucket}/{key} answered: {last_failure}")

    def _read_quorum(self, bucket: str, key: str) -> Steps[Record | None]:
        """Ask ``read_quorum`` replicas (this node counts when it is one); newest version wins,
        and replicas that answered with an older one are repaired."""
        ctx = self.ctx
        replica_set = ctx.replica_set(bucket, key)
        needed = quorum_size(ctx.settings.read_quorum, len(replica_set))
        answers: dict[str, Record | None] = {}
        if ctx.node_id in replica_set:
            entry = ctx.store.peek(bucket, key)
            answers[ctx.node_id] = None if entry is None else record_of(bucket, key, entry,
                                                                          ctx.store.remaining_ttl(entry))
        futures = self._start_gets(bucket, [key], [n for n in replica_set if n != ctx.node_id])
        pending = set(futures)
        deadline = time.monotonic() + ctx.settings.remote_timeout + 0.5
        while pending and len(answers) < needed:
            done, pending = yield Wait(pending, deadline - time.monotonic())
            if not done:
                break
            for fut in done:
                node_id = futures[fut]
                try:
                    response = self.remote.result(Op.GET, node_id, fut)
                except CallFailed:
                    ctx.counters.inc("read_fallbacks")
                    continue
                answers[node_id] = self._first_record(response)
        if len(answers) < needed:
            raise QuorumNotReached(len(answers), needed, len(replica_set),
                                   f"read of {bucket}/{key}: {len(answers)} of {needed} replicas answered")
        records = [r for r in answers.values() if r is not None]
        if not records:
            return None
        newest = max(records, key=lambda r: r.version)
        for node_id, record in answers.items():
            if record is None or record.version < newest.version:
                ctx.counters.inc("read_repairs")
                if node_id == ctx.node_id:
                    ctx.apply_local(newest)
                else:
                    self._fire_and_forget(node_id, [newest])  # a repair, not a write
        return newest

    def read_many(self, bucket: str, keys: Iterable[str]) -> Steps[dict[str, Any]]:
        """Values of the keys that exist (missing keys are left out); one request per node."""
        ctx = self.ctx
        yield from self.catalog.spec(bucket)
        found: dict[str, Any] = {}
        remote: dict[str, tuple[str, ...]] = {}
        placement = ctx.placement()
        for key in keys:
            entry = ctx.store.get(bucket, check_key(key))
            if entry is not None:
                found[key] = ctx.value(entry)
                continue
            candidates = tuple(n for n in ctx.replica_set(bucket, key, placement) if n != ctx.node_id)
            if candidates:
                remote[key] = candidates
        attempt = 0
        while remote:
            by_node: dict[str, list[str]] = defaultdict(list)
            for key, candidates in remote.items():
                if attempt < len(candidates):
                    by_node[candidates[attempt]].append(key)
            if not by_node:
                raise CacheTimeout(f"no replica answered for {len(remote)} keys of bucket {bucket!r}")
            futures = {fut: (node_id, ks) for node_id, ks in by_node.items()
                       for fut in self._start_gets(bucket, ks, [node_id])}
            if futures:
                yield Wait(futures, ctx.settings.remote_timeout + 1, all=True)
            for fut, (node_id, ks) in futures.items():
                try:
                    response = self.remote.result(Op.GET, node_id, fut)
                except CallFailed:
                    ctx.counters.inc("read_fallbacks")
                    continue  # these keys try their next replica
                if isinstance(response, ErrorResponse):
                    raise response.to_exception()
                assert isinstance(response, GetResponse)
                for key, record in zip(ks, response.records, strict=False):
                    del remote[key]
                    if record is not None and record.data is not None:
                        found[key] = ctx.serializer.loads(record.data)
            attempt += 1
        return found

    def _start_gets(self, bucket: str, keys: list[str], node_ids: Iterable[str]) -> dict[Any, str]:
        """GET requests to ``node_ids``; a node the request cannot even start for is left out."""
        payload = encode_request(GetRequest(bucket, keys))
        futures = {}
        for node_id in node_ids:
            try:
                futures[self.ctx.app.request_future(payload, node_id, self.ctx.settings.remote_timeout)] = node_id
            except FAILURES as exc:
                logger.debug("read from %s not started: %s", node_id, self.remote.failure(exc, node_id))
        return futures

    def _fire_and_forget(self, node_id: str, records: list[Record]) -> None:
        try:
            self.replicator.send(node_id, records)
        except FAILURES as exc:
            logger.debug("repair of %s not sent: %s", node_id, self.remote.failure(exc, node_id))

    def _first_record(self, response: Response) -> Record | None:
        if isinstance(response, ErrorResponse):
            raise response.to_exception()
        assert isinstance(response, GetResponse)
        return response.records[0]

    # -- writes -------------------------------------------------------------------------------------
    def put(self, bucket: str, items: Iterable[tuple[str, Any]], ttl: float | None) -> Steps[None]:
        """Store each ``(key, value)`` on its replicas; one request per replica node."""
        spec = yield from self.catalog.spec(bucket)
        groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
        placement = self.ctx.placement()
        for key, value in items:
            record = self.record(spec, key, value, ttl)
            groups[self.ctx.replica_set(bucket, record.key, placement)].append(record)
        if groups:
            yield from self.replicator.write(groups)

    def delete(self, bucket: str, keys: Iterable[str]) -> Steps[list[bool]]:
        """Delete each key; whether it existed, per key."""
        yield from self.catalog.spec(bucket)
        ctx = self.ctx
        groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
        placement = ctx.placement()
        for key in keys:
            record = Record(bucket, check_key(key), None, ctx.clock.now(), None)
            groups[ctx.replica_set(bucket, key, placement)].append(record)
        if not groups:
            return []
        results = yield from self.replicator.write(groups)
        return [existed for _, existed in results]

    def record(self, spec: BucketSpec, key: str, value: Any, ttl: float | None) -> Record:
        data = self.ctx.serializer.dumps(value)
        limit = self.ctx.settings.max_value_size
        if len(data) > limit:
            raise ValueTooLarge(len(data), limit)
        return Record(spec.name, check_key(key), data, self.ctx.clock.now(), spec.ttl if ttl is None else float(ttl))

    # -- operations decided on the primary --------------------------------------------------------
    def on_primary(self, bucket: str, key: str, request: PrimaryRequest) -> Steps[Response]:
        """Run a read-modify-write on the first replica that answers (the primary while it is up)."""
        ctx = self.ctx
        op = request.op
        replica_set = ctx.replica_set(bucket, key)
        payload = encode_request(request)
        last_failure: CallFailed | None = None
        for node_id in replica_set:
            local = None
            if node_id == ctx.node_id:
                local = lambda: encode_response(self.server.execute_primary(request))  # noqa: E731
            call = Call(ctx.primary_app, op, payload, node_id, ctx.settings.remote_timeout * 2, local)
            try:
                response: Response = yield call
            except CallFailed as failed:
                if failed.outcome is Outcome.UNKNOWN:
                    raise CacheTimeout(f"{op.name} on {bucket}/{key}: no answer from {node_id!r} "
                                       f"(the operation may or may not have happened)", maybe_applied=True) from None
                last_failure = failed  # not delivered, or refused: the next replica takes over
                continue
            if isinstance(response, ErrorResponse):
                raise response.to_exception()
            return response
        raise CacheTimeout(f"{op.name} on {bucket}/{key}: no replica reachable ({last_failure})")


def record_of(bucket: str, key: str, entry: Entry, ttl: float | None) -> Record:
    return Record(bucket, key, entry.data, entry.version, ttl)


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys are str, not {type(key).__name__}")
    return key


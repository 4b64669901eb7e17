"""The client role: every cache operation, written once as steps.

Each public method returns a step generator (mycel/remote.py) that :class:`~mycel.cache.Cache`
runs blocking and :class:`~mycel.aio.AsyncCache` awaits. The local fast path of ``get`` (a hit
on a key this node holds) stays in those two classes, so that a hit costs no generator at all.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import CacheTimeout, KeyNotFound, QuorumNotReached, ValueTooLarge
from .protocol import (
    AddRequest,
    AddResponse,
    ApplyRequest,
    BucketsResponse,
    CompareDeleteRequest,
    CompareDeleteResponse,
    ErrorCode,
    ErrorResponse,
    GetRequest,
    GetResponse,
    IncrRequest,
    IncrResponse,
    Op,
    Record,
    Response,
    ScanResponse,
    SetTtlRequest,
    SetTtlResponse,
    StatsRequest,
    StatsResponse,
    encode_request,
    encode_response,
)
from .remote import FAILURES, Call, CallFailed, Outcome, Remote, Steps, Wait
from .replication import Replicator, quorum_size
from .scan import KeyScan
from .store import BucketSpec

if TYPE_CHECKING:
    from .buckets import BucketCatalog
    from .context import CacheContext
    from .server import CacheServer, PrimaryRequest

logger = logging.getLogger(__name__)

MISSING: Any = object()  # no default given: a missing key raises KeyNotFound
CLEAR_TIMEOUT = 30.0  # seconds each node has to purge a bucket (about a second per million keys)


class Client:
    """The operations of one Cache."""

    def __init__(self, ctx: CacheContext, remote: Remote, replicator: Replicator, catalog: BucketCatalog,
                 server: CacheServer) -> None:
        self.ctx = ctx
        self.remote = remote
        self.replicator = replicator
        self.catalog = catalog
        self.server = server

    # -- reads ------------------------------------------------------------------------------------
    def get(self, bucket: str, key: str, default: Any = MISSING, *, looked: bool = False) -> Steps[Any]:
        """The value of ``key``, ``default`` when it is missing (KeyNotFound without one).
        ``looked``: the caller found no local copy already."""
        if looked:
            record = yield from self.read_remote(bucket, key)
        else:
            record = yield from self.read(bucket, key)
        if record is None or record.data is None:
            self.ctx.counters.inc("misses")
            if default is MISSING:
                raise KeyNotFound(bucket, key)
            return default
        self.ctx.counters.inc("remote_hits")
        return self.ctx.serializer.loads(record.data)

    def read(self, bucket: str, key: str, touch: bool = True) -> Steps[Record | None]:
        """The newest record of ``key`` this read policy finds (None: not found); ``touch``
        False reads a local copy without marking it used."""
        check_key(key)
        yield from self.catalog.spec(bucket)
        ctx = self.ctx
        if ctx.settings.read_quorum != 1:
            return (yield from self._read_quorum(bucket, key))
        store = ctx.store
        entry = store.get(bucket, key) if touch else store.peek(bucket, key)
        if entry is not None and entry.data is not None:
            return Record(bucket, key, entry.data, entry.version, store.remaining_ttl(entry))
        return (yield from self.read_remote(bucket, key))

    def read_remote(self, bucket: str, key: str) -> Steps[Record | None]:
        """Ask the key's other replicas, primary first, until one answers."""
        ctx = self.ctx
        check_key(key)
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
            answers[ctx.node_id] = None if entry is None else Record(bucket, key, entry.data, entry.version,
                                                                       ctx.store.remaining_ttl(entry))
        futures = self._start(ctx.app, encode_request(GetRequest(bucket, [key])),
                              [n for n in replica_set if n != ctx.node_id])
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
                    self._start(ctx.app, encode_request(ApplyRequest([newest])), [node_id])  # a repair, not a write
        return newest

    def get_many(self, bucket: str, keys: Iterable[str]) -> Steps[dict[str, Any]]:
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
                       for fut in self._start(ctx.app, encode_request(GetRequest(bucket, ks)), [node_id])}
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

    def ttl(self, bucket: str, key: str) -> Steps[float | None]:
        """Seconds ``key`` has left (None: it never expires); KeyNotFound if it is missing."""
        record = yield from self.read(bucket, key, touch=False)
        if record is None or record.data is None or (record.ttl is not None and record.ttl <= 0):
            raise KeyNotFound(bucket, key)
        return None if record.ttl is None or record.ttl == math.inf else record.ttl

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
        return Record(spec.name, check_key(key), data, self.ctx.clock.now(), final_ttl(spec, ttl))

    def clear(self, bucket: str) -> Steps[None]:
        """Clear ``bucket`` on every node, versioned (see the README's consistency contract)."""
        ctx = self.ctx
        spec = yield from self.catalog.spec(bucket)
        nodes = ctx.app.nodes()
        # 1. Every node's clock, so that the clear's version is newer than every write acknowledged
        #    before it, whichever node's clock issued that write.
        yield from self.catalog.exchange(ctx.others())
        version = ctx.clock.now()
        # 2. Every node, this one too, refuses writes at or below it and purges what it holds below.
        answers = yield from self.catalog.exchange(nodes, [spec], cleared={bucket: version}, include_self=True,
                                                   timeout=max(CLEAR_TIMEOUT, ctx.settings.remote_timeout))
        failed = [n for n in nodes if not isinstance(answers.get(n), BucketsResponse)]
        if ctx.node_id in failed:  # refuse the older writes here at once; the purge follows
            self.catalog.learn([], {bucket: version}, purge=False)
        self.catalog.missed_clear(failed)
        replicas = min(ctx.settings.replicas, len(nodes))
        tolerated = replicas - ctx.write_quorum(replicas)  # every key still has a quorum of cleared replicas
        if len(failed) > tolerated:
            raise QuorumNotReached(len(nodes) - len(failed), len(nodes) - tolerated, len(nodes),
                                   f"clear of bucket {bucket!r} not acknowledged by {', '.join(failed)}; "
                                   "they are sent it again until they answer", maybe_applied=True)
        if failed:
            logger.warning("clear of bucket %r not acknowledged by %s yet (sent again until they answer)",
                           bucket, ", ".join(failed))

    # -- operations decided on the primary --------------------------------------------------------
    def add(self, bucket: str, key: str, value: Any, ttl: float | None) -> Steps[bool]:
        """Store ``value`` only if ``key`` is absent (decided on the primary); True if stored."""
        spec = yield from self.catalog.spec(bucket)
        record = self.record(spec, key, value, ttl)
        request = AddRequest(bucket, record.key, record.data or b"", record.ttl)
        response = yield from self.on_primary(bucket, key, request)
        assert isinstance(response, AddResponse)
        return response.added

    def incr(self, bucket: str, key: str, delta: int) -> Steps[int]:
        """Add ``delta`` to an integer value atomically on the primary; returns the new value."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        yield from self.catalog.spec(bucket)
        response = yield from self.on_primary(bucket, key, IncrRequest(bucket, check_key(key), delta))
        assert isinstance(response, IncrResponse)
        return response.value

    def set_ttl(self, bucket: str, key: str, ttl: float | None) -> Steps[bool]:
        """Give ``key`` a new TTL from now; False if it is missing."""
        spec = yield from self.catalog.spec(bucket)
        request = SetTtlRequest(bucket, check_key(key), final_ttl(spec, ttl))
        response = yield from self.on_primary(bucket, key, request)
        assert isinstance(response, SetTtlResponse)
        return response.updated

    def compare_and_delete(self, bucket: str, key: str, expected: Any) -> Steps[bool]:
        """Delete ``key`` only if its value equals ``expected``, decided on the primary."""
        yield from self.catalog.spec(bucket)
        request = CompareDeleteRequest(bucket, check_key(key), self.ctx.serializer.dumps(expected))
        response = yield from self.on_primary(bucket, key, request)
        assert isinstance(response, CompareDeleteResponse)
        return response.deleted

    def on_primary(self, bucket: str, key: str, request: PrimaryRequest) -> Steps[Response]:
        """Run a read-modify-write on the first replica that answers (the primary while it is up)."""
        ctx = self.ctx
        op = request.op
        payload = encode_request(request)
        last_failure: CallFailed | None = None
        for node_id in ctx.replica_set(bucket, key):
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

    # -- buckets, scans, figures ------------------------------------------------------------------
    def create_bucket(self, name: str, ttl: float | None, max_len: int | None) -> Steps[None]:
        """Create a bucket on every member (idempotent; other settings → BucketConflict)."""
        yield from self.catalog.create(BucketSpec(name, None if ttl is None else float(ttl), max_len))

    def key_scan(self, bucket: str, pattern: str | None, page_size: int) -> Steps[KeyScan]:
        """A new scan of ``bucket``'s keys over every cache node."""
        yield from self.catalog.spec(bucket)
        nodes = self.ctx.app.nodes()
        return KeyScan(bucket, pattern, page_size, nodes, min(self.ctx.settings.replicas, len(nodes)) - 1)

    def scan_page(self, scan: KeyScan) -> Steps[list[str] | None]:
        """The next page of ``scan`` (maybe empty); None once it is over."""
        ctx = self.ctx
        while (node_id := scan.node_id) is not None:
            payload = scan.request()
            local = None
            if node_id == ctx.node_id:
                local = functools.partial(self.server.handle_primary, payload, ctx.node_id)
            try:
                response: Response = yield Call(ctx.primary_app, Op.SCAN, payload, node_id,
                                                ctx.settings.remote_timeout, local)
            except CallFailed as failed:
                scan.node_failed(failed)
                continue
            if isinstance(response, ErrorResponse):
                if response.code == ErrorCode.CURSOR_EXPIRED and scan.expired():
                    continue
                raise response.to_exception()
            assert isinstance(response, ScanResponse)
            return scan.accept(response)
        return None

    def cluster_stats(self, timeout: float) -> Steps[dict[str, dict[str, Any]]]:
        """Every cache node's figures (a node that does not answer within ``timeout`` is left out)."""
        ctx = self.ctx
        futures = self._start(ctx.primary_app, encode_request(StatsRequest()), ctx.app.nodes(), timeout,
                              include_self=True)
        if futures:
            yield Wait(futures, timeout + 0.5, all=True)
        figures: dict[str, dict[str, Any]] = {}
        for fut, node_id in sorted(futures.items(), key=lambda item: item[1]):
            try:
                response = self.remote.result(Op.STATS, node_id, fut) if fut.done() else None
            except CallFailed as failed:
                logger.info("no figures from %s: %s", node_id, failed)
                continue
            if isinstance(response, StatsResponse):
                figures[node_id] = {**response.counters, "entries": response.entries}
        return figures

    # -- helpers ----------------------------------------------------------------------------------------
    def _start(self, app: Any, payload: bytes, node_ids: Iterable[str], timeout: float | None = None,
               include_self: bool = False) -> dict[Any, str]:
        """Requests to ``node_ids``; a node the request cannot even start for is left out."""
        timeout = self.ctx.settings.remote_timeout if timeout is None else timeout
        futures = {}
        for node_id in node_ids:
            if node_id == self.ctx.node_id and not include_self:
                continue
            try:
                futures[app.request_future(payload, node_id, timeout)] = node_id
            except FAILURES as exc:
                logger.debug("request to %s not started: %s", node_id, self.remote.failure(exc, node_id))
        return futures

    def _first_record(self, response: Response) -> Record | None:
        if isinstance(response, ErrorResponse):
            raise response.to_exception()
        assert isinstance(response, GetResponse)
        return response.records[0]


def final_ttl(spec: BucketSpec, ttl: float | None) -> float | None:
    """The TTL a write travels with: None → the bucket's default; ``math.inf`` → never (None)."""
    if ttl is None:
        return spec.ttl
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    ttl = float(ttl)
    if ttl != ttl:
        raise ValueError("ttl must be a number of seconds or None, not NaN")
    return None if ttl == math.inf else ttl


def check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys are str, not {type(key).__name__}")
    return key


"""The server role: answering other nodes' cache requests.

Two applications carry them. ``mycel`` (APP_ID) serves reads and replica writes on the
node's loop thread (``inline``): they never block, and skipping the worker pool saves two
thread hops per request. ``mycel.primary`` (PRIMARY_APP_ID) serves, on the worker pool, the
requests whose handling may block or take long: the read-modify-writes decided on a key's
primary (add, incr, set_ttl, compare-and-delete), which replicate their result before
answering, bucket exchanges (a clear purges a whole bucket), scans and figures.

Once the cache is closing, every request is answered CLOSED, so that callers go to other
replicas and never count this node's copy toward a quorum again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .errors import BucketNotFound, KeyNotFound, MycelError, ProtocolError
from .protocol import (
    AddRequest,
    AddResponse,
    ApplyRequest,
    ApplyResponse,
    BucketsRequest,
    BucketsResponse,
    CompareDeleteRequest,
    CompareDeleteResponse,
    ErrorCode,
    ErrorResponse,
    GetRequest,
    GetResponse,
    IncrRequest,
    IncrResponse,
    Record,
    ScanRequest,
    SetTtlRequest,
    SetTtlResponse,
    StatsRequest,
    StatsResponse,
    decode_request,
    encode_response,
)
from .remote import Remote
from .replication import Replicator
from .scan import ScanSessions

if TYPE_CHECKING:
    from .buckets import BucketCatalog
    from .context import CacheContext
    from .rebalance import Rebalancer

logger = logging.getLogger(__name__)

PrimaryRequest = AddRequest | IncrRequest | SetTtlRequest | CompareDeleteRequest
_PRIMARY = (AddRequest, IncrRequest, SetTtlRequest, CompareDeleteRequest)


class CacheServer:
    """Answers the requests of other nodes (and this node's own requests to itself)."""

    def __init__(self, ctx: CacheContext, remote: Remote, replicator: Replicator, catalog: BucketCatalog,
                 rebalancer: Rebalancer) -> None:
        self.ctx = ctx
        self.remote = remote
        self.replicator = replicator
        self.catalog = catalog
        self.rebalancer = rebalancer
        self.scans = ScanSessions(ctx.store)
        self.closing = False

    def start(self) -> None:
        self.ctx.app.set_request_handler(self.handle, inline=True)
        self.ctx.primary_app.set_request_handler(self.handle_primary)

    def stop(self) -> None:
        self.ctx.app.set_request_handler(None)
        self.ctx.primary_app.set_request_handler(None)

    # -- the loop-thread application -----------------------------------------------------------
    def handle(self, payload: bytes, sender: str) -> bytes:
        """Inline (loop-thread) handler: reads and replica writes. Never blocks."""
        self.ctx.counters.inc("requests")
        try:
            request = decode_request(payload)
            if self.closing:
                response: Any = ErrorResponse(ErrorCode.CLOSED, f"the cache on {self.ctx.node_id!r} is closing")
            elif isinstance(request, GetRequest):
                response = self._serve_get(request)
            elif isinstance(request, ApplyRequest):
                response = ApplyResponse([self.ctx.apply_local(r) for r in request.records])
            else:
                response = ErrorResponse(ErrorCode.BAD_REQUEST, f"{type(request).__name__} goes to the primary app")
        except BucketNotFound as exc:
            response = ErrorResponse.from_exception(exc)
        except ProtocolError as exc:
            response = self._bad_request(exc, sender)
        except Exception as exc:  # a bug here must reach the caller as an answer, not as silence
            response = self._failed(exc, sender)
        return encode_response(response)

    def _serve_get(self, request: GetRequest) -> GetResponse:
        store = self.ctx.store
        records: list[Record | None] = []
        now = time.monotonic()
        for key in request.keys:
            # a tombstone is answered too, so a quorum read can tell a newer delete from a stale value
            entry = store.read(request.bucket, key)
            if entry is None:
                records.append(None)
            else:
                records.append(Record(request.bucket, key, entry.data, entry.version, store.remaining_ttl(entry, now)))
        return GetResponse(records)

    # -- the worker-pool application --------------------------------------------------------------
    def handle_primary(self, payload: bytes, sender: str) -> bytes:
        """Worker-pool handler: primary operations, bucket exchanges, scans, figures."""
        self.ctx.counters.inc("requests")
        try:
            request = decode_request(payload)
            if self.closing:
                response: Any = ErrorResponse(ErrorCode.CLOSED, f"the cache on {self.ctx.node_id!r} is closing")
            elif isinstance(request, _PRIMARY):
                response = self.execute_primary(request)
            elif isinstance(request, BucketsRequest):
                response = self._serve_buckets(request, sender)
            elif isinstance(request, ScanRequest):
                response = self.scans.page(request)
            elif isinstance(request, StatsRequest):
                figures = self.ctx.stats()
                entries = figures.pop("entries")
                response = StatsResponse({k: v for k, v in figures.items() if isinstance(v, int)}, entries)
            else:
                response = ErrorResponse(ErrorCode.BAD_REQUEST, f"{type(request).__name__} goes to the inline app")
        except BucketNotFound as exc:
            response = ErrorResponse.from_exception(exc)
        except ProtocolError as exc:
            response = self._bad_request(exc, sender)
        except Exception as exc:  # a bug here must reach the caller as an answer, not as silence
            response = self._failed(exc, sender)
        return encode_response(response)

    def _serve_buckets(self, request: BucketsRequest, sender: str) -> BucketsResponse:
        # a conflict is logged here; the sender sees it in our list (create_bucket raises)
        self.catalog.learn(request.specs, request.cleared, purge=True)
        if request.fresh and sender != self.ctx.node_id:
            self.rebalancer.request_hand_back(sender)
        return self.catalog.state()

    def execute_primary(self, request: PrimaryRequest) -> Any:
        """Primary side of add / incr / set_ttl / compare-and-delete: read, decide, replicate,
        all under the key's lock."""
        ctx = self.ctx
        store = ctx.store
        bucket, key = request.bucket, request.key
        try:
            store.bucket(bucket)
        except BucketNotFound as exc:
            return ErrorResponse.from_exception(exc)
        with store.key_lock(bucket, key):
            entry = store.peek(bucket, key)
            data = None if entry is None else entry.data  # None: absent (or deleted)
            if isinstance(request, AddRequest):
                if data is not None:
                    return AddResponse(False, None)
                record = Record(bucket, key, request.data, ctx.clock.now(), request.ttl)
                result: Any = AddResponse(True, record.version)
            elif isinstance(request, IncrRequest):
                if entry is None or data is None:
                    return ErrorResponse.from_exception(KeyNotFound(bucket, key))
                current = ctx.serializer.loads(data)
                if not isinstance(current, int) or isinstance(current, bool):
                    return ErrorResponse(ErrorCode.NOT_INTEGER,
                                         f"{bucket}/{key} holds {type(current).__name__}, not an integer")
                value = current + request.delta
                if not -(2**63) <= value < 2**63:
                    return ErrorResponse(ErrorCode.NOT_INTEGER, f"{bucket}/{key} would overflow 64 bits")
                record = Record(bucket, key, ctx.serializer.dumps(value), ctx.clock.now(), store.remaining_ttl(entry))
                result = IncrResponse(value, record.version)
            elif isinstance(request, SetTtlRequest):
                if data is None:
                    return SetTtlResponse(False)
                ttl = request.ttl
                record = Record(bucket, key, data if ttl is None or ttl > 0 else None, ctx.clock.now(), ttl)
                result = SetTtlResponse(True)
            else:
                if data is None or not self._equal(data, request.expected):
                    return CompareDeleteResponse(False)
                record = Record(bucket, key, None, ctx.clock.now(), None)
                result = CompareDeleteResponse(True)
            try:
                self.remote.run(self.replicator.write({ctx.replica_set(bucket, key): [record]}))
            except MycelError as exc:  # QuorumNotReached: this node applied it, others may not have
                return ErrorResponse.from_exception(exc)
            return result

    def _equal(self, data: bytes, expected: bytes) -> bool:
        """Whether two serialized values are equal (as bytes, or else as values)."""
        if data == expected:
            return True
        loads = self.ctx.serializer.loads
        return bool(loads(data) == loads(expected))

    def _failed(self, exc: Exception, sender: str) -> ErrorResponse:
        self.ctx.counters.inc("errors")
        logger.exception("cache request from %s failed", sender)
        return ErrorResponse.from_exception(exc)

    def _bad_request(self, exc: ProtocolError, sender: str) -> ErrorResponse:
        self.ctx.counters.inc("bad_requests")
        self.ctx.counters.inc("errors")
        logger.warning("undecodable cache request from %s: %s", sender, exc)
        return ErrorResponse(ErrorCode.BAD_REQUEST, str(exc))

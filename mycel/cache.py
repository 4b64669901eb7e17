"""Cache: the blocking, thread-safe public API of mycel."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from nodosum import MemberEvent, Node, NodosumError, NodeUnreachable, RemoteError, RequestTimeout

from .errors import (
    BucketConflict,
    BucketNotFound,
    CacheTimeout,
    KeyNotFound,
    MycelError,
    ProtocolError,
    QuorumNotReached,
    ValueTooLarge,
)
from .placement import Placement
from .protocol import (
    AddRequest,
    AddResponse,
    ApplyRequest,
    ApplyResponse,
    BucketsRequest,
    BucketsResponse,
    ErrorCode,
    ErrorResponse,
    GetRequest,
    GetResponse,
    IncrRequest,
    IncrResponse,
    Op,
    Record,
    SetTtlRequest,
    SetTtlResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from .replication import Hints, Replicator, deliver_handoff, handoff_plan, quorum_size
from .serializers import Serializer, get_serializer, is_immutable
from .store import UNSET, BucketSpec, Entry, LocalStore
from .versions import HybridClock

logger = logging.getLogger(__name__)

APP_ID = "mycel"
PRIMARY_APP_ID = "mycel.primary"
_MISSING: Any = object()
MAINTENANCE_INTERVAL = 1.0
SWEEP_INTERVAL = 5.0  # seconds before retrying an incomplete handoff
HANDBACK_ATTEMPTS = 8  # tries to give a restarted member its keys (1 s apart, doubling, at most 30 s)


class Cache:
    """A cluster-wide cache on a started :class:`nodosum.Node`.

    Keys are strings in named buckets (``create_bucket`` first). Each key lives on
    ``replicas`` nodes chosen by rendezvous hashing; writes wait for
    ``write_quorum`` of them ("majority", "all", "one" or a number). Reads are
    answered locally when this node holds the key, else by the primary, falling
    back to the next replica when it fails. With ``read_quorum`` above one, a
    read asks that many replicas and returns the newest version (with majority
    writes and majority reads, every read sees every acknowledged write).
    """

    def __init__(self, node: Node, *, replicas: int = 3, write_quorum: str | int = "majority",
                 read_quorum: str | int = 1, remote_timeout: float = 2.0, serializer: str | Serializer = "pickle",
                 max_value_size: int = 1024 * 1024, tombstone_ttl: float = 300.0) -> None:
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, not {replicas!r}")
        quorum_size(write_quorum, 3)  # validates the policies
        quorum_size(read_quorum, 3)
        if remote_timeout <= 0:
            raise ValueError("remote_timeout must be positive")
        self.node = node
        self.node_id = node.node_id
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.read_quorum = read_quorum
        self.remote_timeout = remote_timeout
        self.max_value_size = max_value_size
        self.serializer = get_serializer(serializer)
        self._store = LocalStore(tombstone_ttl=tombstone_ttl)
        self._clock = HybridClock(self.node_id)
        self._app = node.register_application(APP_ID)
        self._primary_app = node.register_application(PRIMARY_APP_ID)
        self._hints = Hints()
        self._replicator = Replicator(self._app, self._store, self.node_id, self._hints,
                                      timeout=remote_timeout, apply_local=self._apply_local)
        self._placement = Placement(self._app.nodes())  # for routing; follows members at once
        self._placement_lock = threading.Lock()
        self._owned_placement = self._placement  # as of the last rebalance: what this node's keys follow
        self._counts: dict[str, int] = defaultdict(int)
        self._closed = threading.Event()
        self._rebalance_lock = threading.Lock()
        self._sweep_due: float | None = None
        # members whose cache (re)started empty, to be given their keys: node id -> (attempts, due)
        self._handbacks: dict[str, tuple[int, float]] = {}
        self._handbacks_lock = threading.Lock()
        self._app.set_request_handler(self._handle, inline=True)
        self._primary_app.set_request_handler(self._handle_primary)
        node.on_member_event(self._member_event)
        self._maintenance = threading.Thread(target=self._maintain, name=f"mycel-{self.node_id}-maintenance",
                                             daemon=True)
        self._maintenance.start()
        # "fresh": members that already count this node among the key holders (it restarted
        # before they noticed it was gone) hand it back its share, which it lost.
        self._sync_buckets(self._app.nodes(), fresh=True)

    def __repr__(self) -> str:
        return f"<Cache on {self.node_id!r} replicas={self.replicas}>"

    # -- buckets ----------------------------------------------------------------------------
    def create_bucket(self, name: str, ttl: float | None = None, max_len: int | None = None) -> None:
        """Create a bucket on every member (idempotent; other settings → BucketConflict)."""
        spec = BucketSpec(name, None if ttl is None else float(ttl), max_len)
        existing = self._store.has_bucket(name) and self._store.bucket(name)
        if existing and existing != spec:
            raise BucketConflict(f"bucket {name!r} exists as {_describe(existing)}, not {_describe(spec)}")
        payload = encode_request(BucketsRequest([spec]))
        futures = {self._app.request_future(payload, n, self.remote_timeout): n
                   for n in self._app.nodes() if n != self.node_id}
        for fut, node_id in futures.items():
            try:
                response = decode_response(Op.BUCKETS, fut.result(self.remote_timeout + 1))
            except (NodosumError, TimeoutError, concurrent.futures.TimeoutError, ProtocolError) as exc:
                logger.info("bucket %r not confirmed by %s (it learns it when it syncs): %s", name, node_id, exc)
                continue
            if isinstance(response, ErrorResponse):
                raise response.to_exception()
            assert isinstance(response, BucketsResponse)
            theirs = next((b for b in response.specs if b.name == name), None)
            if theirs is not None and theirs != spec:
                raise BucketConflict(f"bucket {name!r} exists on {node_id!r} as {_describe(theirs)}, "
                                     f"not {_describe(spec)}")
        self._store.create_bucket(spec)

    def buckets(self) -> list[BucketSpec]:
        """Every bucket this node knows."""
        return self._store.buckets()

    def _spec(self, bucket: str) -> BucketSpec:
        try:
            return self._store.bucket(bucket)
        except BucketNotFound:
            self._sync_buckets([n for n in self._app.nodes() if n != self.node_id][:3], wait=True)
            return self._store.bucket(bucket)

    def _sync_buckets(self, node_ids: Iterable[str], wait: bool = False, fresh: bool = False) -> None:
        """Exchange bucket definitions with ``node_ids`` (both sides learn the other's)."""
        payload = encode_request(BucketsRequest(self._store.buckets(), fresh))
        for node_id in node_ids:
            if node_id == self.node_id:
                continue
            try:
                fut = self._app.request_future(payload, node_id, self.remote_timeout)
            except NodosumError as exc:
                logger.debug("bucket sync with %s not started: %s", node_id, exc)
                continue
            fut.add_done_callback(self._merge_buckets)
            if wait:
                try:
                    fut.result(self.remote_timeout + 1)
                except (NodosumError, TimeoutError, concurrent.futures.TimeoutError):
                    pass  # _merge_buckets logs it

    def _merge_buckets(self, fut: concurrent.futures.Future[bytes]) -> None:
        try:
            response = decode_response(Op.BUCKETS, fut.result())
        except (NodosumError, TimeoutError, ProtocolError, concurrent.futures.CancelledError) as exc:
            logger.debug("bucket sync failed: %s", exc)
            return
        if isinstance(response, ErrorResponse):
            logger.warning("bucket sync: peer reports %s", response.message)
            self._counts["bucket_conflicts"] += 1
            return
        assert isinstance(response, BucketsResponse)
        self._learn_buckets(response.specs)

    def _learn_buckets(self, specs: Iterable[BucketSpec]) -> None:
        for spec in specs:
            try:
                self._store.create_bucket(spec)
            except BucketConflict as exc:
                self._counts["bucket_conflicts"] += 1
                logger.warning("conflicting definitions of bucket %r: %s", spec.name, exc)

    # -- reads -----------------------------------------------------------------------------------
    def get(self, bucket: str, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``default`` (or KeyNotFound) when it is missing."""
        if self.read_quorum != 1:
            self._spec(bucket)
            record = self._read_quorum(bucket, _check_key(key))
        else:
            try:
                entry = self._store.get(bucket, key)
            except BucketNotFound:
                self._spec(bucket)
                entry = self._store.get(bucket, key)
            if entry is not None:
                obj = entry.obj
                return obj if obj is not UNSET else self._decode(entry)
            record = self._read_remote(bucket, _check_key(key))
        if record is None or record.data is None:
            if default is _MISSING:
                raise KeyNotFound(bucket, key)
            return default
        return self.serializer.loads(record.data)

    def _decode(self, entry: Entry) -> Any:
        assert entry.data is not None
        value = self.serializer.loads(entry.data)
        if is_immutable(value):
            entry.obj = value
        return value

    def _read_remote(self, bucket: str, key: str) -> Record | None:
        replica_set = self._replica_set(bucket, key)
        # Ask the primary (or, when this node is the primary and misses the key, the next
        # replica: with a majority write quorum one of the others has every acknowledged write).
        candidates = [n for n in replica_set if n != self.node_id]
        if not candidates:
            return None
        payload = encode_request(GetRequest(bucket, [key]))
        last_error: Exception | None = None
        for node_id in candidates:
            try:
                response = decode_response(Op.GET, self._app.request(payload, node_id, self.remote_timeout))
            except (NodeUnreachable, RequestTimeout, RemoteError) as exc:
                self._counts["read_fallbacks"] += 1
                last_error = exc
                continue
            if isinstance(response, ErrorResponse):
                raise response.to_exception()
            assert isinstance(response, GetResponse)
            record = response.records[0]
            if record is not None and self.node_id in replica_set:
                self._apply_local(record)  # read repair: this replica missed the write
            return record
        raise CacheTimeout(f"no replica of {bucket}/{key} answered: {last_error}")

    def _read_quorum(self, bucket: str, key: str) -> Record | None:
        """Ask ``read_quorum`` replicas (this node counts when it is one); newest version wins,
        and replicas that answered with an older one are repaired."""
        replica_set = self._replica_set(bucket, key)
        needed = quorum_size(self.read_quorum, len(replica_set))
        answers: dict[str, Record | None] = {}
        if self.node_id in replica_set:
            entry = self._store.peek(bucket, key)
            answers[self.node_id] = None if entry is None else Record(
                bucket, key, entry.data, entry.version, self._store.remaining_ttl(entry))
        payload = encode_request(GetRequest(bucket, [key]))
        futures = {self._app.request_future(payload, n, self.remote_timeout): n
                   for n in replica_set if n != self.node_id}
        pending = set(futures)
        deadline = time.monotonic() + self.remote_timeout + 0.5
        while pending and len(answers) < needed:
            done, pending = concurrent.futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                break
            for fut in done:
                try:
                    response = decode_response(Op.GET, fut.result())
                except (NodosumError, ProtocolError):
                    self._counts["read_fallbacks"] += 1
                    continue
                if isinstance(response, ErrorResponse):
                    raise response.to_exception()
                assert isinstance(response, GetResponse)
                answers[futures[fut]] = response.records[0]
        if len(answers) < needed:
            raise QuorumNotReached(len(answers), needed, len(replica_set),
                                   f"read of {bucket}/{key}: {len(answers)} of {needed} replicas answered")
        records = [r for r in answers.values() if r is not None]
        if not records:
            return None
        newest = max(records, key=lambda r: r.version)
        stale = [n for n, r in answers.items() if r is None or r.version < newest.version]
        for node_id in stale:
            self._counts["read_repairs"] += 1
            if node_id == self.node_id:
                self._apply_local(newest)
            else:
                self._replicator.send(node_id, [newest])  # fire and forget: a repair, not a write
        return newest

    def get_many(self, bucket: str, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that exist (missing keys are left out); one request per node."""
        self._spec(bucket)
        found: dict[str, Any] = {}
        remote: dict[str, tuple[str, ...]] = {}
        placement = self._current_placement()
        for key in keys:
            entry = self._store.get(bucket, _check_key(key))
            if entry is not None:
                found[key] = entry.obj if entry.obj is not UNSET else self._decode(entry)
                continue
            candidates = tuple(n for n in self._replica_set(bucket, key, placement) if n != self.node_id)
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
            futures = {self._app.request_future(encode_request(GetRequest(bucket, ks)), n, self.remote_timeout):
                       ks for n, ks in by_node.items()}
            for fut, ks in futures.items():
                try:
                    response = decode_response(Op.GET, fut.result(self.remote_timeout + 1))
                except (NodeUnreachable, RequestTimeout, RemoteError, concurrent.futures.TimeoutError):
                    self._counts["read_fallbacks"] += 1
                    continue  # these keys try their next replica
                if isinstance(response, ErrorResponse):
                    raise response.to_exception()
                assert isinstance(response, GetResponse)
                for key, record in zip(ks, response.records):
                    del remote[key]
                    if record is not None and record.data is not None:
                        found[key] = self.serializer.loads(record.data)
            attempt += 1
        return found

    # -- writes ----------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` on its replicas (``ttl`` None: the bucket default)."""
        record = self._record(bucket, key, value, ttl)
        self._write({self._replica_set(bucket, key): [record]})

    set = put

    def put_many(self, bucket: str, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store several keys; one request per replica node."""
        groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
        placement = self._current_placement()
        for key, value in mapping.items():
            groups[self._replica_set(bucket, key, placement)].append(self._record(bucket, key, value, ttl))
        if groups:
            self._write(groups)

    def delete(self, bucket: str, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        self._spec(bucket)
        record = Record(bucket, _check_key(key), None, self._clock.now(), None)
        return self._write({self._replica_set(bucket, key): [record]})[0][1]

    def delete_many(self, bucket: str, keys: Iterable[str]) -> int:
        """Delete several keys; returns how many existed."""
        self._spec(bucket)
        groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
        placement = self._current_placement()
        for key in keys:
            groups[self._replica_set(bucket, key, placement)].append(Record(bucket, _check_key(key), None,
                                                                 self._clock.now(), None))
        if not groups:
            return 0
        return sum(1 for _, existed in self._write(groups) if existed)

    def _record(self, bucket: str, key: str, value: Any, ttl: float | None) -> Record:
        spec = self._spec(bucket)
        data = self.serializer.dumps(value)
        if len(data) > self.max_value_size:
            raise ValueTooLarge(len(data), self.max_value_size)
        return Record(bucket, _check_key(key), data, self._clock.now(), spec.ttl if ttl is None else float(ttl))

    def _write(self, groups: dict[tuple[str, ...], list[Record]]) -> list[tuple[bool, bool]]:
        return self._replicator.write(groups, lambda n: quorum_size(self.write_quorum, n))

    def _apply_local(self, record: Record) -> tuple[bool, bool]:
        self._clock.observe(record.version)
        return self._store.apply(record.bucket, record.key, record.data, record.version, record.ttl)

    # -- operations decided on the primary -------------------------------------------------------
    def add(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (decided on the primary); True if stored."""
        record = self._record(bucket, key, value, ttl)
        request = AddRequest(bucket, record.key, record.data or b"", record.ttl)
        response = self._on_primary(bucket, key, request, Op.ADD)
        assert isinstance(response, AddResponse)
        return response.added

    def incr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Add ``delta`` to an integer value atomically on the primary; returns the new value."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        self._spec(bucket)
        response = self._on_primary(bucket, key, IncrRequest(bucket, _check_key(key), delta), Op.INCR)
        assert isinstance(response, IncrResponse)
        return response.value

    def decr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Subtract ``delta`` atomically; returns the new value."""
        return self.incr(bucket, key, -delta)

    def set_ttl(self, bucket: str, key: str, ttl: float | None) -> bool:
        """Give ``key`` a new TTL from now (None: never expires; <= 0: expire now); False if missing."""
        self._spec(bucket)
        response = self._on_primary(bucket, key, SetTtlRequest(bucket, _check_key(key), ttl), Op.SET_TTL)
        assert isinstance(response, SetTtlResponse)
        return response.updated

    def _on_primary(self, bucket: str, key: str, request: Any, op: Op) -> Any:
        """Run a read-modify-write on the first replica that answers (the primary while it is up)."""
        replica_set = self._replica_set(bucket, key)
        payload = encode_request(request)
        last_error: Exception | None = None
        for node_id in replica_set:
            if node_id == self.node_id:
                response = self._execute_primary(request)
            else:
                try:
                    raw = self._primary_app.request(payload, node_id, self.remote_timeout * 2)
                except NodeUnreachable as exc:  # not delivered: the next replica takes over
                    last_error = exc
                    continue
                except RequestTimeout as exc:
                    raise CacheTimeout(f"{op.name} on {bucket}/{key}: no answer from {node_id!r} "
                                       f"(the operation may or may not have happened)") from exc
                except RemoteError as exc:
                    raise MycelError(f"{op.name} failed on {node_id!r}: {exc.remote_message}") from exc
                response = decode_response(op, raw)
            if isinstance(response, ErrorResponse):
                raise response.to_exception()
            return response
        raise CacheTimeout(f"{op.name} on {bucket}/{key}: no replica reachable ({last_error})")

    def _execute_primary(self, request: Any) -> Any:
        """Primary side of add / incr / set_ttl: read, decide, replicate under the key's lock."""
        bucket, key = request.bucket, request.key
        try:
            self._store.bucket(bucket)
        except BucketNotFound as exc:
            return ErrorResponse.from_exception(exc)
        with self._store.key_lock(bucket, key):
            entry = self._store.get(bucket, key)
            if isinstance(request, AddRequest):
                if entry is not None:
                    return AddResponse(False, None)
                record = Record(bucket, key, request.data, self._clock.now(), request.ttl)
                result: Any = AddResponse(True, record.version)
            elif isinstance(request, IncrRequest):
                if entry is None:
                    return ErrorResponse.from_exception(KeyNotFound(bucket, key))
                current = self.serializer.loads(entry.data or b"")
                if not isinstance(current, int) or isinstance(current, bool):
                    return ErrorResponse(ErrorCode.NOT_INTEGER,
                                         f"{bucket}/{key} holds {type(current).__name__}, not an integer")
                value = current + request.delta
                if not -(2**63) <= value < 2**63:
                    return ErrorResponse(ErrorCode.NOT_INTEGER, f"{bucket}/{key} would overflow 64 bits")
                ttl = self._store.remaining_ttl(entry)
                record = Record(bucket, key, self.serializer.dumps(value), self._clock.now(), ttl)
                result = IncrResponse(value, record.version)
            else:
                if entry is None:
                    return SetTtlResponse(False)
                ttl = request.ttl
                data = entry.data if ttl is None or ttl > 0 else None
                record = Record(bucket, key, data, self._clock.now(), ttl)
                result = SetTtlResponse(True)
            try:
                self._write({self._replica_set(bucket, key): [record]})
            except MycelError as exc:
                return ErrorResponse(ErrorCode.INTERNAL, str(exc))
            return result

    # -- request handlers -------------------------------------------------------------------------
    def _handle(self, payload: bytes, sender: str) -> bytes:
        """Inline (loop-thread) handler: reads, replica writes, bucket sync. Never blocks."""
        try:
            request = decode_request(payload)
            if isinstance(request, GetRequest):
                response: Any = self._serve_get(request)
            elif isinstance(request, ApplyRequest):
                response = ApplyResponse([self._apply_local(r) for r in request.records])
            elif isinstance(request, BucketsRequest):
                # a conflict is logged here; the sender sees it in our list (create_bucket raises)
                self._learn_buckets(request.specs)
                if request.fresh and sender != self.node_id:
                    with self._handbacks_lock:  # the maintenance thread sends them (this thread must not block)
                        self._handbacks[sender] = (0, 0.0)
                response = BucketsResponse(self._store.buckets())
            else:
                response = ErrorResponse(ErrorCode.BAD_REQUEST, f"{type(request).__name__} goes to the primary app")
        except BucketNotFound as exc:
            response = ErrorResponse.from_exception(exc)
        except ProtocolError as exc:
            self._counts["bad_requests"] += 1
            logger.warning("undecodable cache request from %s: %s", sender, exc)
            response = ErrorResponse(ErrorCode.BAD_REQUEST, str(exc))
        return encode_response(response)

    def _serve_get(self, request: GetRequest) -> GetResponse:
        records: list[Record | None] = []
        now = time.monotonic()
        for key in request.keys:
            # a tombstone is answered too, so a quorum read can tell a newer delete from a stale value
            entry = self._store.get(request.bucket, key) or self._store.peek(request.bucket, key)
            if entry is None:
                records.append(None)
            else:
                records.append(Record(request.bucket, key, entry.data, entry.version,
                                      self._store.remaining_ttl(entry, now)))
        return GetResponse(records)

    def _handle_primary(self, payload: bytes, sender: str) -> bytes:
        """Worker-pool handler for add / incr / set_ttl (they replicate, so they block)."""
        try:
            request = decode_request(payload)
            if not isinstance(request, (AddRequest, IncrRequest, SetTtlRequest)):
                raise ProtocolError(f"{type(request).__name__} is not a primary operation")
            response = self._execute_primary(request)
        except ProtocolError as exc:
            self._counts["bad_requests"] += 1
            logger.warning("undecodable primary request from %s: %s", sender, exc)
            response = ErrorResponse(ErrorCode.BAD_REQUEST, str(exc))
        return encode_response(response)

    # -- placement and membership -----------------------------------------------------------------
    def _current_placement(self) -> Placement:
        members = self._app.nodes()
        placement = self._placement
        if list(placement.members) != members:
            with self._placement_lock:
                if list(self._placement.members) != members:
                    self._placement = Placement(members)
                placement = self._placement
        return placement

    def _replica_set(self, bucket: str, key: str, placement: Placement | None = None) -> tuple[str, ...]:
        placement = placement or self._current_placement()
        return tuple(placement.replicas(bucket, key, self.replicas))

    def _member_event(self, event: MemberEvent) -> None:
        if self._closed.is_set():
            return
        if event.kind.value == "join":
            self._sync_buckets([event.member.node_id])
        self.rebalance()

    def rebalance(self) -> int:
        """Hand keys whose replica set changed to their new holders; returns keys sent."""
        with self._rebalance_lock:
            old = self._owned_placement
            new = Placement(self._app.nodes())
            if old == new:
                return 0
            self._owned_placement = new
            return self._handoff(old, new)

    def _handoff(self, old: Placement, new: Placement) -> int:
        sends, drops = handoff_plan(self._store, self.node_id, old, new, self.replicas, time.monotonic())
        if not sends:
            return 0
        complete = self._deliver_handoff(sends)
        if len(complete) < len(sends):
            self._sweep_due = time.monotonic() + SWEEP_INTERVAL
        for bucket, key, targets in drops:
            if all(t in complete for t in targets):
                self._store.remove(bucket, key)
        sent = sum(len(records) for target, records in sends.items() if target in complete)
        self._counts["handoff_keys"] += sent
        logger.info("handoff: %d keys sent to %d nodes", sent, len(complete))
        return sent

    def _deliver_handoff(self, sends: dict[str, list[Record]]) -> Collection[str]:
        """Send handoff batches (with our buckets first: a new member may not know them);
        returns the nodes that acknowledged everything."""
        self._sync_buckets(sends, wait=True)
        return deliver_handoff(self._replicator, sends)

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
                self._counts["handbacks_abandoned"] += 1
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
        with self._rebalance_lock:
            current = self._owned_placement
            if node_id not in current.members:
                return 0
            without = Placement([m for m in current.members if m != node_id])
            sends, _ = handoff_plan(self._store, self.node_id, without, current, self.replicas, time.monotonic())
            records = sends.get(node_id)
            if not records:
                return 0
            if node_id not in self._deliver_handoff({node_id: records}):
                return None
        self._counts["handback_keys"] += len(records)
        logger.info("handed %d keys back to %s, whose cache started empty", len(records), node_id)
        return len(records)

    # -- maintenance and life cycle -----------------------------------------------------------------
    def _maintain(self) -> None:
        while not self._closed.wait(MAINTENANCE_INTERVAL):
            try:
                self._store.expire()
                if self._sweep_due is not None and time.monotonic() >= self._sweep_due:
                    self._sweep_due = None
                    with self._rebalance_lock:
                        # keys a failed handoff left here: send them on and drop them
                        self._handoff(self._owned_placement, self._owned_placement)
                self._hand_back_due()
                if len(self._hints):
                    self._counts["hints_replayed"] += self._replicator.replay_hints(set(self._app.nodes()))
            except (MycelError, NodosumError) as exc:
                self._counts["maintenance_errors"] += 1
                logger.warning("cache maintenance failed: %s", exc)

    def stats(self) -> dict[str, Any]:
        """Local store figures and counters of this node's cache."""
        stats = dict(self._store.stats())
        stats.update(self._counts)
        stats["hints_pending"] = len(self._hints)
        stats["hints_dropped"] = self._hints.dropped
        return stats

    def close(self, handoff: bool = True) -> None:
        """Stop this node's cache; with ``handoff`` first give its keys to the remaining members."""
        if self._closed.is_set():
            return
        self._closed.set()
        if handoff:
            members = [n for n in self._app.nodes() if n != self.node_id]
            if members:
                self._handoff(Placement(self._app.nodes()), Placement(members))
        self._app.set_request_handler(None)
        self._primary_app.set_request_handler(None)
        self._maintenance.join(MAINTENANCE_INTERVAL * 5)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys are str, not {type(key).__name__}")
    return key


def _describe(spec: BucketSpec) -> str:
    return f"(ttl={spec.ttl}, max_len={spec.max_len})"

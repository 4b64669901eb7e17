"""Cache: the blocking, thread-safe public API of mycel (the client role's surface)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn

from nodosum import Node, ReadyTimeout

from .buckets import BucketCatalog
from .client import MISSING, Client
from .context import CacheContext, CacheSettings
from .errors import BucketNotFound, CacheClosed, CacheTimeout
from .rebalance import Rebalancer
from .remote import Remote
from .replication import Replicator
from .scan import KeyScan
from .serializers import Serializer
from .server import CacheServer
from .store import UNSET, BucketSpec

logger = logging.getLogger(__name__)


class Cache:
    """A cluster-wide cache on a started :class:`nodosum.Node`.

    Keys are strings in named buckets (``create_bucket`` first). Each key lives on
    ``replicas`` nodes chosen by rendezvous hashing; writes wait for
    ``write_quorum`` of them ("majority", "all", "one" or a number). Reads are
    answered locally when this node holds the key, else by the primary, falling
    back to the next replica when it fails. With ``read_quorum`` above one, a
    read asks that many replicas and returns the newest version (with majority
    writes and majority reads, every read sees every acknowledged write).

    TTLs are seconds from now: ``None`` means the bucket's default, ``math.inf`` never
    expires, ``<= 0`` expires at once. Every method is thread-safe and raises a
    :class:`~mycel.errors.MycelError`; after :meth:`close`, :class:`~mycel.errors.CacheClosed`.
    For asyncio code, wrap it in :class:`~mycel.aio.AsyncCache`.
    """

    def __init__(self, node: Node, *, replicas: int = 3, write_quorum: str | int = "majority",
                 read_quorum: str | int = 1, remote_timeout: float = 2.0, serializer: str | Serializer = "pickle",
                 max_value_size: int = 1024 * 1024, tombstone_ttl: float = 300.0) -> None:
        settings = CacheSettings(replicas, write_quorum, read_quorum, remote_timeout, max_value_size, tombstone_ttl)
        ctx = self._ctx = CacheContext(node, settings, serializer)
        self.node = node
        self.node_id = ctx.node_id
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.read_quorum = read_quorum
        self.remote_timeout = remote_timeout
        self.max_value_size = max_value_size
        self.serializer = ctx.serializer
        self._closed = False
        self._store = ctx.store  # _CLOSED once closed, so that get's fast path needs no check of its own
        self._app = ctx.app
        self._local_reads = read_quorum == 1  # a local copy answers a read
        remote = Remote(ctx.counters)
        self._run = remote.run
        self._arun = remote.arun
        replicator = Replicator(ctx, remote)
        self._catalog = BucketCatalog(ctx, remote)
        self._rebalancer = Rebalancer(ctx, remote, replicator, self._catalog)
        self._server = CacheServer(ctx, remote, replicator, self._catalog, self._rebalancer)
        self._client = Client(ctx, remote, replicator, self._catalog, self._server)
        self._server.start()
        self._rebalancer.start()
        # "fresh": members that already count this node among the key holders (it restarted
        # before they noticed it was gone) hand it back its share, which it lost.
        self._catalog.sync(ctx.app.nodes(), fresh=True)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Cache on {self.node_id!r} replicas={self.replicas}{state}>"

    # -- buckets ----------------------------------------------------------------------------
    def create_bucket(self, name: str, ttl: float | None = None, max_len: int | None = None) -> None:
        """Create a bucket on every member (idempotent; other settings → BucketConflict)."""
        self._check_open()
        self._run(self._client.create_bucket(name, ttl, max_len))

    def buckets(self) -> list[BucketSpec]:
        """Every bucket this node knows."""
        self._check_open()
        return self._store.buckets()

    def clear(self, bucket: str) -> None:
        """Remove every key of ``bucket`` on every node.

        Versioned: no write older than the clear — in flight, hinted or handed off — brings a
        key back, and writes after it are kept. Returns once enough nodes purged the bucket
        that every key lost a quorum of its replicas; nodes that did not answer get the clear
        again until they do (else QuorumNotReached, with ``maybe_applied``)."""
        self._check_open()
        self._run(self._client.clear(bucket))

    # -- reads -----------------------------------------------------------------------------------
    def get(self, bucket: str, key: str, default: Any = MISSING) -> Any:
        """The value of ``key``; ``default`` (or KeyNotFound) when it is missing."""
        if self._local_reads:
            try:
                entry = self._store.get(bucket, key)  # the hot path: this much, and no more
            except BucketNotFound:
                steps = self._client.get(bucket, key, default)
            else:
                if entry is not None:
                    obj = entry.obj
                    return obj if obj is not UNSET else self._ctx.value(entry)
                steps = self._client.get(bucket, key, default, looked=True)
        else:
            self._check_open()
            steps = self._client.get(bucket, key, default)
        return self._run(steps)

    def get_many(self, bucket: str, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that exist (missing keys are left out); one request per node."""
        self._check_open()
        return self._run(self._client.get_many(bucket, keys))

    def ttl(self, bucket: str, key: str) -> float | None:
        """Seconds ``key`` has left to live (None: it never expires); KeyNotFound if it is missing."""
        self._check_open()
        return self._run(self._client.ttl(bucket, key))

    def iter_keys(self, bucket: str, pattern: str | None = None, *, page_size: int = 1000) -> Iterator[str]:
        """Every live key of ``bucket`` matching the glob ``pattern`` (fnmatch syntax; None: all),
        each once, fetched from every node in pages of ``page_size``.

        A key present for the whole scan is yielded exactly once; one written or deleted
        meanwhile may or may not be. Up to ``replicas - 1`` nodes that do not answer are
        skipped (their keys have other replicas); more raise CacheTimeout."""
        self._check_open()
        return self._keys_of(self._run(self._client.key_scan(bucket, pattern, page_size)))

    def _keys_of(self, scan: KeyScan) -> Iterator[str]:
        while (keys := self._run(self._client.scan_page(scan))) is not None:
            yield from keys

    def keys(self, bucket: str, pattern: str | None = None) -> list[str]:
        """The keys :meth:`iter_keys` yields, as a list."""
        return list(self.iter_keys(bucket, pattern))

    # -- writes ----------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` on its replicas (``ttl`` None: the bucket default)."""
        self._check_open()
        self._run(self._client.put(bucket, ((key, value),), ttl))

    set = put

    def put_many(self, bucket: str, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store several keys; one request per replica node. QuorumNotReached names the keys
        that did not reach their quorum (``failed_keys``); the others were stored."""
        self._check_open()
        self._run(self._client.put(bucket, mapping.items(), ttl))

    def delete(self, bucket: str, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        self._check_open()
        return self._run(self._client.delete(bucket, (key,)))[0]

    def delete_many(self, bucket: str, keys: Iterable[str]) -> int:
        """Delete several keys; returns how many existed."""
        self._check_open()
        return sum(self._run(self._client.delete(bucket, keys)))

    # -- operations decided on the primary -------------------------------------------------------
    def add(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (decided on the primary); True if stored."""
        self._check_open()
        return self._run(self._client.add(bucket, key, value, ttl))

    def incr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Add ``delta`` to an integer value atomically on the primary; returns the new value
        (its TTL is kept)."""
        self._check_open()
        return self._run(self._client.incr(bucket, key, delta))

    def decr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Subtract ``delta`` atomically; returns the new value."""
        return self.incr(bucket, key, -delta)

    def set_ttl(self, bucket: str, key: str, ttl: float | None) -> bool:
        """Give ``key`` a new TTL from now (None: the bucket default; ``math.inf``: never expires;
        <= 0: expire now); False if it is missing."""
        self._check_open()
        return self._run(self._client.set_ttl(bucket, key, ttl))

    def compare_and_delete(self, bucket: str, key: str, expected: Any) -> bool:
        """Delete ``key`` only if its value equals ``expected``, decided on the key's primary
        (a lock released by its holder); True if it was deleted."""
        self._check_open()
        return self._run(self._client.compare_and_delete(bucket, key, expected))

    # -- membership, figures and life cycle ----------------------------------------------------------
    def ready(self, timeout: float | None = 30.0) -> None:
        """Block until this node has joined the cluster and learned its buckets (CacheTimeout
        if that takes longer than ``timeout`` seconds)."""
        self._check_open()
        started = time.monotonic()
        try:
            self.node.ready(timeout)
        except ReadyTimeout as exc:
            raise CacheTimeout(str(exc)) from exc
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        answers = self._run(self._catalog.exchange(self._ctx.others(), timeout=remaining))
        if answers and all(answer is None for answer in answers.values()):
            raise CacheTimeout(f"no member answered a bucket exchange within {timeout}s")

    def rebalance(self) -> int:
        """Hand keys whose replica set changed to their new holders; returns keys sent."""
        self._check_open()
        return self._rebalancer.rebalance()

    def stats(self) -> dict[str, Any]:
        """This node's figures: requests, errors, timeouts, hits, misses, evictions, handoff
        keys, hints and more (ints), ``entries`` (live keys per bucket), and the node's own
        figures prefixed ``node_``."""
        self._check_open()
        return self._ctx.stats()

    def cluster_stats(self, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """Every cache node's :meth:`stats` by node id (a node that does not answer within
        ``timeout`` seconds is left out)."""
        self._check_open()
        return self._run(self._client.cluster_stats(timeout))

    def close(self, handoff: bool = True) -> None:
        """Stop this node's cache; with ``handoff`` first give its keys to the remaining members.

        From the start of the close, this cache answers other nodes' requests with CLOSED
        (they go to other replicas), and every call on it raises CacheClosed."""
        if self._closed:
            return
        self._closed = True
        self._store = _CLOSED
        self._server.closing = True
        self._rebalancer.close(handoff)
        self._server.stop()

    def _check_open(self) -> None:
        if self._closed:
            _closed()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed() -> NoReturn:
    raise CacheClosed("this cache is closed")


class _Closed:
    """The store of a closed Cache, as its client sees it: every use raises CacheClosed."""

    def __getattr__(self, name: str) -> Any:
        _closed()


_CLOSED: Any = _Closed()

"""Cache: the blocking, thread-safe public API of mycel (the client role's surface)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from nodosum import Node

from .buckets import BucketCatalog
from .client import Client, check_key
from .context import CacheContext, CacheSettings
from .errors import BucketNotFound, KeyNotFound
from .protocol import AddRequest, AddResponse, IncrRequest, IncrResponse, SetTtlRequest, SetTtlResponse
from .rebalance import Rebalancer
from .remote import Remote
from .replication import Replicator
from .serializers import Serializer
from .server import CacheServer
from .store import UNSET, BucketSpec

logger = logging.getLogger(__name__)

_MISSING: Any = object()


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
        self._store = ctx.store
        self._app = ctx.app
        self._local_reads = read_quorum == 1  # a local copy answers a read
        remote = Remote(ctx.counters)
        self._run = remote.run
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
        return f"<Cache on {self.node_id!r} replicas={self.replicas}>"

    # -- buckets ----------------------------------------------------------------------------
    def create_bucket(self, name: str, ttl: float | None = None, max_len: int | None = None) -> None:
        """Create a bucket on every member (idempotent; other settings → BucketConflict)."""
        self._run(self._catalog.create(BucketSpec(name, None if ttl is None else float(ttl), max_len)))

    def buckets(self) -> list[BucketSpec]:
        """Every bucket this node knows."""
        return self._store.buckets()

    # -- reads -----------------------------------------------------------------------------------
    def get(self, bucket: str, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``default`` (or KeyNotFound) when it is missing."""
        if self._local_reads:
            try:
                entry = self._store.get(bucket, key)
            except BucketNotFound:
                steps = self._client.read(bucket, key)
            else:
                if entry is not None:
                    obj = entry.obj
                    return obj if obj is not UNSET else self._ctx.value(entry)
                steps = self._client.read_remote(bucket, check_key(key))
        else:
            steps = self._client.read(bucket, key)
        record = self._run(steps)
        if record is None or record.data is None:
            if default is _MISSING:
                raise KeyNotFound(bucket, key)
            return default
        return self.serializer.loads(record.data)

    def get_many(self, bucket: str, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that exist (missing keys are left out); one request per node."""
        return self._run(self._client.read_many(bucket, keys))

    # -- writes ----------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` on its replicas (``ttl`` None: the bucket default)."""
        self._run(self._client.put(bucket, ((key, value),), ttl))

    set = put

    def put_many(self, bucket: str, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store several keys; one request per replica node."""
        self._run(self._client.put(bucket, mapping.items(), ttl))

    def delete(self, bucket: str, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        return self._run(self._client.delete(bucket, (key,)))[0]

    def delete_many(self, bucket: str, keys: Iterable[str]) -> int:
        """Delete several keys; returns how many existed."""
        return sum(self._run(self._client.delete(bucket, keys)))

    # -- operations decided on the primary -------------------------------------------------------
    def add(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (decided on the primary); True if stored."""
        spec = self._run(self._catalog.spec(bucket))
        record = self._client.record(spec, key, value, ttl)
        request = AddRequest(bucket, record.key, record.data or b"", record.ttl)
        response = self._run(self._client.on_primary(bucket, key, request))
        assert isinstance(response, AddResponse)
        return response.added

    def incr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Add ``delta`` to an integer value atomically on the primary; returns the new value."""
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        self._run(self._catalog.spec(bucket))
        response = self._run(self._client.on_primary(bucket, key, IncrRequest(bucket, check_key(key), delta)))
        assert isinstance(response, IncrResponse)
        return response.value

    def decr(self, bucket: str, key: str, delta: int = 1) -> int:
        """Subtract ``delta`` atomically; returns the new value."""
        return self.incr(bucket, key, -delta)

    def set_ttl(self, bucket: str, key: str, ttl: float | None) -> bool:
        """Give ``key`` a new TTL from now (None: never expires; <= 0: expire now); False if missing."""
        self._run(self._catalog.spec(bucket))
        response = self._run(self._client.on_primary(bucket, key, SetTtlRequest(bucket, check_key(key), ttl)))
        assert isinstance(response, SetTtlResponse)
        return response.updated

    # -- membership, figures and life cycle ----------------------------------------------------------
    def rebalance(self) -> int:
        """Hand keys whose replica set changed to their new holders; returns keys sent."""
        return self._rebalancer.rebalance()

    def stats(self) -> dict[str, Any]:
        """Local store figures and counters of this node's cache."""
        ctx = self._ctx
        stats = dict(self._store.stats())
        stats.update(ctx.counters.snapshot())
        stats["hints_pending"] = len(ctx.hints)
        stats["hints_dropped"] = ctx.hints.dropped
        return stats

    def close(self, handoff: bool = True) -> None:
        """Stop this node's cache; with ``handoff`` first give its keys to the remaining members."""
        if self._ctx.closed.is_set():
            return
        self._rebalancer.close(handoff)
        self._server.stop()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

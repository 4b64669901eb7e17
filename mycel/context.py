"""What the three roles of one Cache share: settings, the local store, the clock, counters, placement.

A :class:`~mycel.cache.Cache` is three roles over one :class:`CacheContext`: the client
(mycel/client.py, driven by mycel/cache.py and mycel/aio.py), the server answering other
nodes (mycel/server.py) and the rebalancer with its maintenance thread (mycel/rebalance.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from nodosum import Application, Counters, Node, NodosumError

from .placement import Placement
from .protocol import Record
from .replication import Hints, quorum_size
from .serializers import Serializer, get_serializer, is_immutable
from .store import UNSET, Entry, LocalStore
from .versions import HybridClock

logger = logging.getLogger(__name__)

APP_ID = "mycel"  # reads and replica writes, answered on the node's loop thread
PRIMARY_APP_ID = "mycel.primary"  # requests whose handling blocks, answered on its worker pool

#: The counters of :meth:`CacheContext.stats`, reported (as 0) before they first count.
COUNTERS = (
    "requests",  # requests this node's cache answered for others (and itself)
    "errors",  # of those, the ones that failed (undecodable, or a failure in the handler)
    "bad_requests",
    "timeouts",  # requests to other nodes that got no answer in time
    "remote_failures",  # requests to other nodes that failed in any way (timeouts included)
    "bad_responses",
    "misses",  # gets that found no value
    "remote_hits",  # gets answered with a value by another node
    "read_fallbacks",  # a replica failed a read and the next one was asked
    "read_repairs",
    "clears",  # clear versions taken on (from this node's clears or others')
    "handoff_keys",
    "handback_keys",
    "handbacks_abandoned",
    "hints_replayed",
    "bucket_conflicts",
    "maintenance_errors",
)


@dataclass(frozen=True)
class CacheSettings:
    """A Cache's validated settings (see :class:`~mycel.cache.Cache` for their meaning)."""

    replicas: int = 3
    write_quorum: str | int = "majority"
    read_quorum: str | int = 1
    remote_timeout: float = 2.0
    max_value_size: int = 1024 * 1024
    tombstone_ttl: float = 300.0

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or self.replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, not {self.replicas!r}")
        quorum_size(self.write_quorum, 3)  # validates the policies
        quorum_size(self.read_quorum, 3)
        if not isinstance(self.remote_timeout, (int, float)) or self.remote_timeout <= 0:
            raise ValueError(f"remote_timeout must be a positive number of seconds, not {self.remote_timeout!r}")
        if not isinstance(self.max_value_size, int) or self.max_value_size < 1:
            raise ValueError(f"max_value_size must be a positive int, not {self.max_value_size!r}")


class CacheContext:
    """The state one Cache's client, server and rebalancer share."""

    def __init__(self, node: Node, settings: CacheSettings, serializer: str | Serializer) -> None:
        self.node = node
        self.node_id = node.node_id
        self.settings = settings
        self.serializer = get_serializer(serializer)
        self.store = LocalStore(tombstone_ttl=settings.tombstone_ttl)
        self.clock = HybridClock(self.node_id)
        self.counters = Counters()
        self.hints = Hints()
        self.app: Application = node.register_application(APP_ID)
        self.primary_app: Application = node.register_application(PRIMARY_APP_ID)
        self.closed = threading.Event()
        self._placement = Placement(self.app.nodes())
        self._placement_lock = threading.Lock()

    def placement(self) -> Placement:
        """Placement over the current members (rebuilt only when they change)."""
        members = self.app.nodes()
        placement = self._placement
        if list(placement.members) != members:
            with self._placement_lock:
                if list(self._placement.members) != members:
                    self._placement = Placement(members)
                placement = self._placement
        return placement

    def replica_set(self, bucket: str, key: str, placement: Placement | None = None) -> tuple[str, ...]:
        """The nodes holding ``(bucket, key)``, primary first."""
        placement = placement or self.placement()
        return tuple(placement.replicas(bucket, key, self.settings.replicas))

    def write_quorum(self, replicas: int) -> int:
        return quorum_size(self.settings.write_quorum, replicas)

    def apply_local(self, record: Record) -> tuple[bool, bool]:
        """Apply a versioned write to this node's store; ``(applied, existed)``."""
        self.clock.observe(record.version)
        return self.store.apply(record.bucket, record.key, record.data, record.version, record.ttl)

    def value(self, entry: Entry) -> Any:
        """The deserialized value of a live entry, cached on it when it cannot change."""
        obj = entry.obj
        if obj is not UNSET:
            return obj
        assert entry.data is not None
        value = self.serializer.loads(entry.data)
        if is_immutable(value):
            entry.obj = value
        return value

    def stats(self) -> dict[str, Any]:
        """This cache's figures: the store's (``entries`` per bucket, evictions, ...), the
        counters above, ``hits`` (local and remote), hints, and the node's own figures
        prefixed ``node_``."""
        store = self.store.stats()
        figures: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        figures.update(self.counters.snapshot())
        figures.update(store)
        figures["hits"] = store["hits"] + figures["remote_hits"]
        figures["hints_pending"] = len(self.hints)
        figures["hints_dropped"] = self.hints.dropped
        try:
            node = self.node.stats()
        except NodosumError as exc:  # stopped: the cache's own figures still mean something
            logger.debug("no node figures: %s", exc)
        else:
            figures.update((f"node_{name}", value) for name, value in node.items())
        return figures

    def others(self) -> list[str]:
        """The other cache nodes."""
        return [n for n in self.app.nodes() if n != self.node_id]

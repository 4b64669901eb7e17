"""The local store: this node's share of every bucket, with LRU bounds and TTLs.

Sans-I/O and thread-safe: one lock guards a :class:`LocalStore`; time comes from
an injectable clock (``time.monotonic`` by default, a fake one in tests).

Each bucket keeps two dicts of its own (keys are never concatenated with the
bucket name): an ``OrderedDict`` of live values in least- to most-recently-used
order, and a dict of tombstones. Every entry that can expire (a value with a TTL,
and every tombstone) is also in one TTL index, a ``SortedList`` of
``(expires_at, bucket, key)``, so purging is O(log n) per entry, never a scan.

Writes are *newer version wins*: a write applies only when its version is newer
than whatever the key holds, live value or tombstone, and than the bucket's *clear
version* (the version of its last clear, :meth:`LocalStore.clear`). Deletes leave
tombstones that live ``tombstone_ttl`` seconds, so a late, older write cannot resurrect
a deleted key. LRU evictions and :meth:`LocalStore.remove` leave no tombstone.

Work over a whole bucket (:meth:`LocalStore.items`, :meth:`LocalStore.clear`, scans)
holds the lock for at most ``CHUNK`` keys at a time, so the loop thread's reads and
writes interleave with it. Only the key list is copied at once, up front: one C-level
copy of pointers (about 15 ms per million keys), never the entries.

Entries handed out are never rewritten, except ``expires_at`` (by
:meth:`LocalStore.set_expiry`) and the ``obj`` slot, which belongs to the cache
layer; a reader holding an entry always sees consistent ``data`` and ``version``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from sortedcontainers import SortedList

from mycel.errors import BucketConflict, BucketNotFound
from mycel.versions import ZERO_VERSION, Version

__all__ = ["CHUNK", "UNSET", "BucketSpec", "Entry", "LocalStore", "MAX_BUCKET_NAME_BYTES"]

logger = logging.getLogger(__name__)

#: Initial value of :attr:`Entry.obj`: no deserialized value cached yet.
UNSET: object = object()

#: Longest bucket name, in UTF-8 bytes.
MAX_BUCKET_NAME_BYTES = 255

_KEY_LOCKS = 256  # a power of two

#: Keys handled per lock hold by the whole-bucket methods.
CHUNK = 1000

_keys = dict.keys  # a dict's own key view: on an OrderedDict it skips the linked list (10x faster to copy)


class BucketSpec(NamedTuple):
    """A bucket's settings: default TTL (seconds, None = no expiry) and LRU bound per node."""

    name: str
    ttl: float | None = None
    max_len: int | None = None


class Entry:
    """One stored value (``data``) or tombstone (``data is None``) and its version."""

    __slots__ = ("data", "version", "expires_at", "obj")

    def __init__(
        self,
        data: bytes | None,
        version: Version,
        expires_at: float | None,
        obj: object = UNSET,
    ) -> None:
        self.data = data
        self.version = version
        self.expires_at = expires_at  # on the store's clock; None = never
        self.obj = obj  # the cache layer's deserialized value, or UNSET

    @property
    def is_tombstone(self) -> bool:
        """True for a delete marker."""
        return self.data is None

    def __repr__(self) -> str:
        size = "tombstone" if self.data is None else f"{len(self.data)} bytes"
        return f"Entry({size}, version={self.version!r}, expires_at={self.expires_at!r})"


def validate_spec(spec: BucketSpec) -> BucketSpec:
    """Check ``spec`` and return it normalised (ttl as float); ValueError names the bad field."""
    name, ttl, max_len = spec
    if not isinstance(name, str) or not name:
        raise ValueError(f"bucket name must be a non-empty str, not {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"bucket name {name!r} is not encodable as UTF-8") from None
    if size > MAX_BUCKET_NAME_BYTES:
        raise ValueError(
            f"bucket name is {size} UTF-8 bytes long, more than {MAX_BUCKET_NAME_BYTES}"
        )
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise ValueError(f"bucket {name!r}: ttl must be a number of seconds or None, not {ttl!r}")
        ttl = float(ttl)
        if not (0.0 < ttl < math.inf):
            raise ValueError(
                f"bucket {name!r}: ttl must be a positive, finite number of seconds or None, "
                f"not {ttl!r}"
            )
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(
                f"bucket {name!r}: max_len must be an int of at least 1 or None, not {max_len!r}"
            )
    return BucketSpec(name, ttl, max_len)


class _Bucket:
    __slots__ = ("spec", "live", "tombs", "cleared")

    def __init__(self, spec: BucketSpec) -> None:
        self.spec = spec
        self.live: OrderedDict[str, Entry] = OrderedDict()  # LRU first, MRU last
        self.tombs: dict[str, Entry] = {}
        self.cleared: Version = ZERO_VERSION  # writes at or below it are refused


class LocalStore:
    """This node's buckets: newer-version-wins writes, LRU bounds, TTLs, tombstones."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, tombstone_ttl: float = 300.0
    ) -> None:
        if isinstance(tombstone_ttl, bool) or not (0.0 < float(tombstone_ttl) < math.inf):
            raise ValueError(f"tombstone_ttl must be a positive, finite number, not {tombstone_ttl!r}")
        self._clock = clock
        self._tombstone_ttl = float(tombstone_ttl)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        # Hot path: get() reaches the live dict in one lookup.
        self._live: dict[str, OrderedDict[str, Entry]] = {}
        self._index: SortedList = SortedList()  # (expires_at, bucket, key)
        self._key_locks = tuple(threading.Lock() for _ in range(_KEY_LOCKS))
        self._evictions = 0
        self._expirations = 0
        self._tombstones_expired = 0
        self._hits = 0

    @property
    def tombstone_ttl(self) -> float:
        """How long a tombstone is kept, in seconds."""
        return self._tombstone_ttl

    # ------------------------------------------------------------------ buckets

    def create_bucket(self, spec: BucketSpec) -> bool:
        """Create a bucket; False if it exists with the same settings, BucketConflict if not."""
        spec = validate_spec(BucketSpec(*spec))
        with self._lock:
            existing = self._buckets.get(spec.name)
            if existing is not None:
                if existing.spec == spec:
                    return False
                raise BucketConflict(
                    f"bucket {spec.name!r} already exists with ttl={existing.spec.ttl!r}, "
                    f"max_len={existing.spec.max_len!r}; asked for ttl={spec.ttl!r}, "
                    f"max_len={spec.max_len!r}"
                )
            bucket = _Bucket(spec)
            self._buckets[spec.name] = bucket
            self._live[spec.name] = bucket.live
        logger.debug("created bucket %r (ttl=%r, max_len=%r)", spec.name, spec.ttl, spec.max_len)
        return True

    def bucket(self, name: str) -> BucketSpec:
        """The settings of bucket ``name``."""
        try:
            return self._buckets[name].spec
        except KeyError:
            raise BucketNotFound(name) from None

    def has_bucket(self, name: str) -> bool:
        """True if bucket ``name`` exists."""
        return name in self._buckets

    def buckets(self) -> list[BucketSpec]:
        """Every bucket's settings, sorted by name."""
        with self._lock:
            return sorted(b.spec for b in self._buckets.values())

    # ------------------------------------------------------------------ reads

    def get(self, bucket: str, key: str) -> Entry | None:
        """The live value of ``key`` (never a tombstone, never expired); marks it recently used."""
        with self._lock:
            try:
                live = self._live[bucket]
            except KeyError:
                raise BucketNotFound(bucket) from None
            entry = live.get(key)
            if entry is None:
                return None
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= self._clock():
                self._drop(bucket, key, entry, live)
                self._expirations += 1
                return None
            live.move_to_end(key)
            self._hits += 1
            return entry

    def read(self, bucket: str, key: str) -> Entry | None:
        """The value or tombstone of ``key``, unexpired, marking a value recently used
        (another node's read: not counted as a hit here)."""
        with self._lock:
            b = self._get_bucket(bucket)
            entry = b.live.get(key)
            container: dict[str, Entry] = b.live
            if entry is None:
                entry = b.tombs.get(key)
                container = b.tombs
                if entry is None:
                    return None
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= self._clock():
                self._drop(bucket, key, entry, container)
                self._count_expired(entry)
                return None
            if container is b.live:
                b.live.move_to_end(key)
            return entry

    def peek(self, bucket: str, key: str) -> Entry | None:
        """The value or tombstone stored for ``key``, unexpired, without touching LRU order."""
        with self._lock:
            b = self._get_bucket(bucket)
            entry = b.live.get(key)
            container: dict[str, Entry] = b.live
            if entry is None:
                entry = b.tombs.get(key)
                container = b.tombs
                if entry is None:
                    return None
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= self._clock():
                self._drop(bucket, key, entry, container)
                self._count_expired(entry)
                return None
            return entry

    def items(self, bucket: str) -> Iterator[tuple[str, Entry]]:
        """Every unexpired value and tombstone of ``bucket`` (for handoff), ``CHUNK`` keys per
        lock hold. What is there for the whole iteration is yielded once; an entry written or
        removed meanwhile may or may not be."""
        keys = self._key_list(bucket, tombstones=True)
        return self._entries(bucket, keys)

    def _entries(self, bucket: str, keys: list[str]) -> Iterator[tuple[str, Entry]]:
        for start in range(0, len(keys), CHUNK):
            found = []
            with self._lock:
                b = self._buckets[bucket]
                live, tombs = b.live, b.tombs
                now = self._clock()
                for key in keys[start:start + CHUNK]:
                    entry = live.get(key) or tombs.get(key)
                    if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                        found.append((key, entry))
            yield from found

    def keys(self, bucket: str) -> list[str]:
        """A snapshot of the keys of ``bucket``'s live values (some may expire before they are read)."""
        return self._key_list(bucket, tombstones=False)

    def live_keys(self, bucket: str, keys: Sequence[str]) -> list[str]:
        """Those of ``keys`` (at most about ``CHUNK`` of them) that hold a live, unexpired value."""
        with self._lock:
            live = self._get_bucket(bucket).live
            now = self._clock()
            found = []
            for key in keys:
                entry = live.get(key)
                if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                    found.append(key)
            return found

    def _key_list(self, bucket: str, tombstones: bool) -> list[str]:
        with self._lock:
            b = self._get_bucket(bucket)
            keys = list(_keys(b.live))
            if tombstones:
                keys += b.tombs
            return keys

    def count(self, bucket: str) -> int:
        """The number of live (unexpired, non-tombstone) values in ``bucket``."""
        with self._lock:
            b = self._get_bucket(bucket)
            self._purge(self._clock())
            return len(b.live)

    def remaining_ttl(self, entry: Entry, now: float | None = None) -> float | None:
        """Seconds until ``entry`` expires (0.0 if it has), or None if it never does."""
        if entry.expires_at is None:
            return None
        if now is None:
            now = self._clock()
        return max(0.0, entry.expires_at - now)

    # ------------------------------------------------------------------ writes

    def apply(
        self, bucket: str, key: str, data: bytes | None, version: Version, ttl: float | None
    ) -> tuple[bool, bool]:
        """Store ``data`` (None = tombstone) at ``version`` if that is newer than what ``key`` holds.

        ``ttl`` is final: seconds from now, None = no expiry, ``<= 0`` = a tombstone (expired
        at once, its version remembered). The caller resolves a bucket's default TTL before
        calling. Returns ``(applied, existed)``; ``existed`` means a live value was there.
        """
        _check_ttl(ttl)
        with self._lock:
            b, now = self._open(bucket)
            index = self._index
            live = b.live
            current = live.get(key)
            existed = current is not None
            container: dict[str, Entry] = live
            if current is None:
                current = b.tombs.get(key)
                container = b.tombs
            if (current is not None and version <= current.version) or version <= b.cleared:
                return (False, existed)
            if current is not None:
                self._drop(bucket, key, current, container)

            if data is None or (ttl is not None and ttl <= 0):
                expires_at = now + self._tombstone_ttl
                b.tombs[key] = Entry(None, version, expires_at)
                index.add((expires_at, bucket, key))
                return (True, existed)

            expiry: float | None = None if ttl is None or ttl == math.inf else now + ttl
            live[key] = Entry(data, version, expiry)
            if expiry is not None:
                index.add((expiry, bucket, key))
            max_len = b.spec.max_len
            if max_len is not None and len(live) > max_len:
                self._evict(bucket, live, max_len)
            return (True, existed)

    def _open(self, bucket: str) -> tuple[_Bucket, float]:
        """The bucket and the current time, with everything already expired purged (lock held)."""
        b = self._get_bucket(bucket)
        now = self._clock()
        if self._index and self._index[0][0] <= now:
            self._purge(now)
        return b, now

    def set_expiry(self, bucket: str, key: str, ttl: float | None) -> bool:
        """Change a live value's expiry in place, keeping its version; False if there is none.

        ``ttl <= 0`` turns the value into a tombstone with the same version. A value
        that stays live is marked recently used (a touch).
        """
        _check_ttl(ttl)
        with self._lock:
            b, now = self._open(bucket)
            index = self._index
            live = b.live
            entry = live.get(key)
            if entry is None:
                return False
            if ttl is not None and ttl <= 0:
                self._drop(bucket, key, entry, live)
                expires_at = now + self._tombstone_ttl
                b.tombs[key] = Entry(None, entry.version, expires_at)
                index.add((expires_at, bucket, key))
                return True
            if entry.expires_at is not None:
                index.remove((entry.expires_at, bucket, key))
            if ttl is None or ttl == math.inf:
                entry.expires_at = None
            else:
                entry.expires_at = now + ttl
                index.add((entry.expires_at, bucket, key))
            live.move_to_end(key)
            return True

    def remove(self, bucket: str, key: str) -> None:
        """Forget ``key`` entirely, leaving no tombstone (after handing it off)."""
        with self._lock:
            b = self._get_bucket(bucket)
            entry = b.live.get(key)
            if entry is not None:
                self._drop(bucket, key, entry, b.live)
                return
            entry = b.tombs.get(key)
            if entry is not None:
                self._drop(bucket, key, entry, b.tombs)

    def clear(self, bucket: str, version: Version | None = None) -> int:
        """Forget the values and tombstones of ``bucket``, leaving no tombstones; returns how many.

        With ``version`` (a cluster-wide clear), only those at or below it, and from now on
        refuse every write at or below it: see :meth:`set_cleared`. Without, all that are
        there when the clear starts (a local reset). ``CHUNK`` keys per lock hold.
        """
        if version is not None:
            self.set_cleared(bucket, version)
        keys = self._key_list(bucket, tombstones=True)
        dropped = 0
        for start in range(0, len(keys), CHUNK):
            with self._lock:
                b = self._buckets[bucket]
                limit = b.cleared if version is not None else None
                for key in keys[start:start + CHUNK]:
                    container: dict[str, Entry] = b.live
                    entry = container.get(key)
                    if entry is None:
                        container = b.tombs
                        entry = container.get(key)
                    if entry is not None and (limit is None or entry.version <= limit):
                        self._drop(bucket, key, entry, container)
                        dropped += 1
        return dropped

    def set_cleared(self, bucket: str, version: Version) -> bool:
        """Refuse every write to ``bucket`` at or below ``version`` from now on (entries already
        there stay until :meth:`clear`); True if that is newer than its clear version was."""
        with self._lock:
            b = self._get_bucket(bucket)
            if version <= b.cleared:
                return False
            b.cleared = version
            return True

    def cleared(self, bucket: str) -> Version:
        """The clear version of ``bucket`` (``ZERO_VERSION`` if it was never cleared)."""
        return self._get_bucket(bucket).cleared

    def clear_versions(self) -> dict[str, Version]:
        """The clear version of every bucket that was ever cleared."""
        with self._lock:
            return {name: b.cleared for name, b in self._buckets.items() if b.cleared != ZERO_VERSION}

    # ------------------------------------------------------------------ expiry

    def expire(self, now: float | None = None) -> int:
        """Purge every expired value and tombstone; returns how many were purged."""
        with self._lock:
            return self._purge(self._clock() if now is None else now)

    def next_expiry(self) -> float | None:
        """The earliest time (store clock) at which something expires, or None."""
        with self._lock:
            return self._index[0][0] if self._index else None

    # ------------------------------------------------------------------ misc

    def key_lock(self, bucket: str, key: str) -> threading.Lock:
        """One of a fixed set of striped locks, for read-modify-write on ``(bucket, key)``."""
        return self._key_locks[hash((bucket, key)) & (_KEY_LOCKS - 1)]

    def stats(self) -> dict[str, object]:
        """Live values per bucket, tombstones, evictions, expirations and hits of :meth:`get`
        (after a purge)."""
        with self._lock:
            self._purge(self._clock())
            return {
                "entries": {name: len(b.live) for name, b in sorted(self._buckets.items())},
                "tombstones": sum(len(b.tombs) for b in self._buckets.values()),
                "evictions": self._evictions,
                "expirations": self._expirations,
                "tombstones_expired": self._tombstones_expired,
                "hits": self._hits,
            }

    # ------------------------------------------------------------------ internals (lock held)

    def _get_bucket(self, name: str) -> _Bucket:
        try:
            return self._buckets[name]
        except KeyError:
            raise BucketNotFound(name) from None

    def _drop(self, bucket: str, key: str, entry: Entry, container: dict[str, Entry]) -> None:
        del container[key]
        if entry.expires_at is not None:
            self._index.remove((entry.expires_at, bucket, key))

    def _count_expired(self, entry: Entry) -> None:
        if entry.data is None:
            self._tombstones_expired += 1
        else:
            self._expirations += 1

    def _evict(self, bucket: str, live: OrderedDict[str, Entry], max_len: int) -> None:
        index = self._index
        while len(live) > max_len:
            key, entry = live.popitem(last=False)
            if entry.expires_at is not None:
                index.remove((entry.expires_at, bucket, key))
            self._evictions += 1

    def _purge(self, now: float) -> int:
        index = self._index
        if not index or index[0][0] > now:
            return 0
        # (t,) sorts before every (t, bucket, key): this counts entries with expires_at <= now.
        stop = index.bisect_left((math.nextafter(now, math.inf),))
        due = index[:stop]
        del index[:stop]
        buckets = self._buckets
        for _, bucket, key in due:
            b = buckets[bucket]
            if b.live.pop(key, None) is not None:
                self._expirations += 1
            else:
                del b.tombs[key]
                self._tombstones_expired += 1
        return len(due)


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and ttl != ttl:  # NaN
        raise ValueError("ttl must be a number of seconds or None, not NaN")

"""Tests of mycel.store: the local store, on a fake clock."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mycel.errors import BucketConflict, BucketNotFound
from mycel.store import UNSET, BucketSpec, Entry, LocalStore
from mycel.versions import HybridClock


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def v(n: int, node: str = "n") -> tuple[int, str]:
    return (n, node)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> LocalStore:
    s = LocalStore(clock=clock, tombstone_ttl=60.0)
    s.create_bucket(BucketSpec("b"))
    return s


def check_invariants(store: LocalStore) -> None:
    """Every expiring entry is in the TTL index exactly once, and nothing else is."""
    expected = []
    for name, b in store._buckets.items():
        assert store._live[name] is b.live
        assert not set(b.live) & set(b.tombs)
        if b.spec.max_len is not None:
            assert len(b.live) <= b.spec.max_len
        for key, entry in list(b.live.items()) + list(b.tombs.items()):
            assert entry.is_tombstone == (key in b.tombs)
            if entry.expires_at is not None:
                expected.append((entry.expires_at, name, key))
            else:
                assert key in b.live
    assert sorted(expected) == list(store._index)


# ------------------------------------------------------------------ buckets


def test_create_bucket_idempotent_and_conflict(store: LocalStore) -> None:
    assert store.create_bucket(BucketSpec("x", ttl=10, max_len=5)) is True
    assert store.create_bucket(BucketSpec("x", ttl=10.0, max_len=5)) is False
    with pytest.raises(BucketConflict, match="already exists"):
        store.create_bucket(BucketSpec("x", ttl=11, max_len=5))
    with pytest.raises(BucketConflict):
        store.create_bucket(BucketSpec("x", ttl=10, max_len=None))
    assert store.bucket("x") == BucketSpec("x", 10.0, 5)
    assert isinstance(store.bucket("x").ttl, float)
    assert store.has_bucket("x") and not store.has_bucket("y")
    store.create_bucket(BucketSpec("a"))
    assert [s.name for s in store.buckets()] == ["a", "b", "x"]


@pytest.mark.parametrize(
    "spec, match",
    [
        (BucketSpec(""), "name"),
        (BucketSpec(5), "name"),  # type: ignore[arg-type]
        (BucketSpec("é" * 128), "255"),
        (BucketSpec("x", ttl=0), "ttl"),
        (BucketSpec("x", ttl=-1.0), "ttl"),
        (BucketSpec("x", ttl=float("nan")), "ttl"),
        (BucketSpec("x", ttl=float("inf")), "ttl"),
        (BucketSpec("x", ttl="10"), "ttl"),  # type: ignore[arg-type]
        (BucketSpec("x", ttl=True), "ttl"),  # type: ignore[arg-type]
        (BucketSpec("x", max_len=0), "max_len"),
        (BucketSpec("x", max_len=2.0), "max_len"),  # type: ignore[arg-type]
        (BucketSpec("x", max_len=True), "max_len"),  # type: ignore[arg-type]
    ],
)
def test_create_bucket_validation(store: LocalStore, spec: BucketSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        store.create_bucket(spec)


def test_bucket_name_limit_is_in_bytes(store: LocalStore) -> None:
    assert store.create_bucket(BucketSpec("é" * 127))  # 254 bytes
    assert store.create_bucket(BucketSpec("x" * 255))


def test_unknown_bucket_raises_everywhere(store: LocalStore) -> None:
    calls = [
        lambda: store.bucket("nope"),
        lambda: store.get("nope", "k"),
        lambda: store.peek("nope", "k"),
        lambda: store.apply("nope", "k", b"v", v(1), None),
        lambda: store.set_expiry("nope", "k", 1.0),
        lambda: store.remove("nope", "k"),
        lambda: store.items("nope"),
        lambda: store.count("nope"),
        lambda: store.clear("nope"),
    ]
    for call in calls:
        with pytest.raises(BucketNotFound) as info:
            call()
        assert info.value.bucket == "nope"
        assert isinstance(info.value, LookupError)


def test_invalid_tombstone_ttl() -> None:
    with pytest.raises(ValueError, match="tombstone_ttl"):
        LocalStore(tombstone_ttl=0)


# ------------------------------------------------------------------ versions


def test_entry_defaults() -> None:
    e = Entry(b"x", v(1), None)
    assert e.obj is UNSET and not e.is_tombstone
    assert Entry(None, v(1), 5.0).is_tombstone
    assert "tombstone" in repr(Entry(None, v(1), 5.0))


def test_apply_and_get(store: LocalStore) -> None:
    assert store.get("b", "k") is None
    assert store.apply("b", "k", b"v1", v(1), None) == (True, False)
    entry = store.get("b", "k")
    assert entry is not None and entry.data == b"v1" and entry.version == v(1)
    assert entry.expires_at is None and entry.obj is UNSET
    assert store.apply("b", "k", b"v2", v(2), None) == (True, True)
    assert store.get("b", "k").data == b"v2"  # type: ignore[union-attr]


def test_newer_wins_older_and_equal_ignored(store: LocalStore) -> None:
    assert store.apply("b", "k", b"v5", v(5), None) == (True, False)
    assert store.apply("b", "k", b"v4", v(4), None) == (False, True)
    assert store.apply("b", "k", b"v5bis", v(5), None) == (False, True)
    assert store.get("b", "k").data == b"v5"  # type: ignore[union-attr]
    # Same clock value: the node id breaks the tie.
    assert store.apply("b", "k", b"v5b", v(5, "z"), None) == (True, True)
    assert store.apply("b", "k", b"v5a", v(5, "a"), None) == (False, True)
    assert store.get("b", "k").data == b"v5b"  # type: ignore[union-attr]


def test_entries_are_never_rewritten(store: LocalStore) -> None:
    store.apply("b", "k", b"v1", v(1), None)
    first = store.get("b", "k")
    store.apply("b", "k", b"v2", v(2), None)
    assert first is not None and first.data == b"v1" and first.version == v(1)
    assert store.get("b", "k") is not first


def test_keys_are_per_bucket(store: LocalStore) -> None:
    store.create_bucket(BucketSpec("ab"))
    store.create_bucket(BucketSpec("a"))
    store.apply("ab", "c", b"1", v(1), None)
    store.apply("a", "bc", b"2", v(1), None)
    assert store.get("ab", "c").data == b"1"  # type: ignore[union-attr]
    assert store.get("a", "bc").data == b"2"  # type: ignore[union-attr]
    assert store.get("b", "c") is None


# ------------------------------------------------------------------ tombstones


def test_tombstone_blocks_older_write_then_expires(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "k", b"v1", v(1), None)
    assert store.apply("b", "k", None, v(3), None) == (True, True)
    assert store.get("b", "k") is None
    tomb = store.peek("b", "k")
    assert tomb is not None and tomb.is_tombstone and tomb.version == v(3)
    assert tomb.expires_at == clock.t + 60.0
    # A late, older write (a retry or handoff) must not resurrect the key.
    assert store.apply("b", "k", b"v2", v(2), None) == (False, False)
    assert store.apply("b", "k", None, v(3), None) == (False, False)
    assert store.get("b", "k") is None
    clock.t += 59.999
    assert store.peek("b", "k") is not None
    clock.t += 0.001  # exactly at the deadline: gone
    assert store.peek("b", "k") is None
    # With the tombstone gone, an old write applies again (bounded by tombstone_ttl).
    assert store.apply("b", "k", b"v2", v(2), None) == (True, False)
    assert store.get("b", "k").data == b"v2"  # type: ignore[union-attr]
    check_invariants(store)


def test_newer_write_replaces_tombstone(store: LocalStore) -> None:
    store.apply("b", "k", None, v(3), None)
    assert store.apply("b", "k", b"v4", v(4), 10.0) == (True, False)
    assert store.get("b", "k").data == b"v4"  # type: ignore[union-attr]
    check_invariants(store)


@pytest.mark.parametrize("ttl", [0.0, -5.0, 0])
def test_ttl_not_positive_stores_tombstone(store: LocalStore, ttl: float) -> None:
    store.apply("b", "k", b"v1", v(1), None)
    assert store.apply("b", "k", b"v2", v(2), ttl) == (True, True)
    assert store.get("b", "k") is None
    tomb = store.peek("b", "k")
    assert tomb is not None and tomb.is_tombstone and tomb.version == v(2)
    assert store.apply("b", "k", b"old", v(1), None) == (False, False)
    check_invariants(store)


def test_nan_ttl_refused(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="NaN"):
        store.apply("b", "k", b"v", v(1), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        store.set_expiry("b", "k", float("nan"))


def test_infinite_ttl_is_no_expiry(store: LocalStore) -> None:
    store.apply("b", "k", b"v", v(1), float("inf"))
    assert store.get("b", "k").expires_at is None  # type: ignore[union-attr]
    check_invariants(store)


# ------------------------------------------------------------------ expiry


def test_expired_value_never_returned(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "k", b"v", v(1), 10.0)
    entry = store.get("b", "k")
    assert entry is not None and entry.expires_at == clock.t + 10.0
    assert store.remaining_ttl(entry) == 10.0
    clock.t += 9.5
    assert store.get("b", "k") is not None and store.peek("b", "k") is not None
    assert store.remaining_ttl(entry) == pytest.approx(0.5)
    store.apply("b", "k2", b"v", v(1), 10.0)
    clock.t += 0.5  # exactly at the deadline of "k"
    assert store.get("b", "k") is None
    assert store.remaining_ttl(entry) == 0.0
    clock.t += 9.5  # exactly at the deadline of "k2"
    assert store.peek("b", "k2") is None
    assert store.stats()["expirations"] == 2
    check_invariants(store)


def test_get_removes_expired(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "k", b"v", v(1), 1.0)
    clock.t += 2
    assert store.get("b", "k") is None
    assert "k" not in store._buckets["b"].live
    assert store.next_expiry() is None
    # An expired value is not "existing" for the next write, and does not block older versions.
    assert store.apply("b", "k", b"old", v(0, "a"), None) == (True, False)
    check_invariants(store)


def test_remaining_ttl_never(store: LocalStore) -> None:
    store.apply("b", "k", b"v", v(1), None)
    assert store.remaining_ttl(store.get("b", "k")) is None  # type: ignore[arg-type]


def test_proactive_expire_counts_and_removes(store: LocalStore, clock: FakeClock) -> None:
    for i in range(10):
        store.apply("b", f"k{i}", b"v", v(1), float(i + 1))
    store.apply("b", "forever", b"v", v(1), None)
    store.apply("b", "dead", None, v(1), None)  # tombstone: expires at +60
    assert store.next_expiry() == clock.t + 1.0
    assert store.expire() == 0
    clock.t += 5.0
    assert store.expire() == 5  # k0..k4 (deadline at or before now)
    assert store.next_expiry() == clock.t + 1.0
    assert store.count("b") == 6
    assert store.expire(now=clock.t + 100) == 6  # k5..k9 and the tombstone
    assert store.next_expiry() is None
    stats = store.stats()
    assert stats["expirations"] == 10 and stats["tombstones_expired"] == 1
    assert stats["entries"] == {"b": 1} and stats["tombstones"] == 0
    check_invariants(store)


def test_count_is_exact(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "a", b"v", v(1), 1.0)
    store.apply("b", "b", b"v", v(1), None)
    store.apply("b", "c", None, v(1), None)
    assert store.count("b") == 2
    clock.t += 1
    assert store.count("b") == 1


def test_set_expiry(store: LocalStore, clock: FakeClock) -> None:
    assert store.set_expiry("b", "missing", 5.0) is False
    store.apply("b", "k", b"v", v(7), None)
    assert store.set_expiry("b", "k", 5.0) is True
    entry = store.get("b", "k")
    assert entry is not None and entry.version == v(7) and entry.expires_at == clock.t + 5.0
    check_invariants(store)
    assert store.set_expiry("b", "k", 50.0) is True
    clock.t += 10
    assert store.get("b", "k") is not None
    assert store.set_expiry("b", "k", None) is True
    assert store.get("b", "k").expires_at is None  # type: ignore[union-attr]
    check_invariants(store)
    clock.t += 1000
    assert store.get("b", "k") is not None
    # ttl <= 0: a tombstone with the same version.
    assert store.set_expiry("b", "k", 0) is True
    assert store.get("b", "k") is None
    tomb = store.peek("b", "k")
    assert tomb is not None and tomb.is_tombstone and tomb.version == v(7)
    assert store.set_expiry("b", "k", 5.0) is False  # tombstones are not live
    assert store.apply("b", "k", b"old", v(6), None) == (False, False)
    check_invariants(store)


def test_set_expiry_on_expired_value(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "k", b"v", v(1), 1.0)
    clock.t += 1
    assert store.set_expiry("b", "k", 100.0) is False
    assert store.peek("b", "k") is None


def test_remove_leaves_no_tombstone(store: LocalStore) -> None:
    store.apply("b", "k", b"v", v(5), 10.0)
    store.remove("b", "k")
    assert store.peek("b", "k") is None
    assert store.apply("b", "k", b"old", v(1), None) == (True, False)
    store.apply("b", "t", None, v(5), None)
    store.remove("b", "t")
    assert store.peek("b", "t") is None
    store.remove("b", "never-there")
    check_invariants(store)


def test_clear(store: LocalStore) -> None:
    store.apply("b", "a", b"v", v(1), 10.0)
    store.apply("b", "b", b"v", v(1), None)
    store.apply("b", "c", None, v(1), None)
    assert store.clear("b") == 3
    assert list(store.items("b")) == [] and store.next_expiry() is None
    check_invariants(store)


def test_items_snapshot_includes_tombstones(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "live", b"v", v(1), None)
    store.apply("b", "dead", None, v(2), None)
    store.apply("b", "soon", b"v", v(1), 1.0)
    clock.t += 1
    items = dict(store.items("b"))
    assert set(items) == {"live", "dead"}
    assert items["dead"].is_tombstone and items["dead"].version == v(2)


# ------------------------------------------------------------------ LRU


def test_lru_bound_and_order(clock: FakeClock) -> None:
    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("lru", max_len=3))
    for key in "abc":
        store.apply("lru", key, b"v", v(1), None)
    assert store.get("lru", "a") is not None  # order now b, c, a
    store.apply("lru", "d", b"v", v(1), None)  # evicts b
    assert store.peek("lru", "b") is None
    assert list(store._buckets["lru"].live) == ["c", "a", "d"]
    store.peek("lru", "c")  # peek does not refresh
    store.apply("lru", "e", b"v", v(1), None)  # evicts c
    assert store.peek("lru", "c") is None
    # An update moves the key to most recently used.
    store.apply("lru", "a", b"v2", v(2), None)
    store.apply("lru", "f", b"v", v(1), None)  # evicts d
    assert {k for k, _ in store.items("lru")} == {"e", "a", "f"}
    assert store.stats()["evictions"] == 3
    # Evicted keys leave no tombstone: an old version may come back.
    assert store.apply("lru", "b", b"old", v(0, "x"), None) == (True, False)
    check_invariants(store)


def test_lru_bound_after_many_puts(clock: FakeClock) -> None:
    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("lru", max_len=100))
    rng = random.Random(7)
    for i in range(5000):
        store.apply("lru", f"k{rng.randrange(1000)}", b"v", v(i), rng.choice([None, 5.0, 50.0]))
        if i % 7 == 0:
            store.get("lru", f"k{rng.randrange(1000)}")
        if i % 100 == 0:
            clock.t += 1
        assert len(store._buckets["lru"].live) <= 100
    assert store.count("lru") <= 100
    check_invariants(store)


def test_tombstones_do_not_count_against_max_len(clock: FakeClock) -> None:
    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("lru", max_len=2))
    store.apply("lru", "a", b"v", v(1), None)
    store.apply("lru", "b", b"v", v(1), None)
    for i in range(10):
        store.apply("lru", f"t{i}", None, v(1), None)
    assert store.count("lru") == 2
    assert store.stats()["evictions"] == 0


def test_expired_entries_go_before_lru_eviction(clock: FakeClock) -> None:
    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("lru", max_len=2))
    store.apply("lru", "keep", b"v", v(1), None)
    store.apply("lru", "short", b"v", v(1), 1.0)
    store.get("lru", "keep")
    clock.t += 2
    store.apply("lru", "new", b"v", v(1), None)
    assert store.peek("lru", "keep") is not None
    assert store.stats()["evictions"] == 0


def test_per_bucket_bounds_are_independent(clock: FakeClock) -> None:
    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("small", max_len=1))
    store.create_bucket(BucketSpec("big"))
    for i in range(10):
        store.apply("small", f"k{i}", b"v", v(1), None)
        store.apply("big", f"k{i}", b"v", v(1), None)
    assert store.count("small") == 1 and store.count("big") == 10
    assert store.stats()["entries"] == {"big": 10, "small": 1}


# ------------------------------------------------------------------ locking


def test_key_lock_is_stable_and_striped(store: LocalStore) -> None:
    lock = store.key_lock("b", "k")
    assert lock is store.key_lock("b", "k")
    assert len({id(store.key_lock("b", f"k{i}")) for i in range(10_000)}) == 256
    with lock:
        assert lock.locked()


def test_thread_safety_smoke(clock: FakeClock) -> None:
    store = LocalStore(clock=clock, tombstone_ttl=5.0)
    store.create_bucket(BucketSpec("t", max_len=50))
    hlc = HybridClock("n")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = f"k{rng.randrange(200)}"
                r = rng.random()
                if r < 0.4:
                    store.apply("t", key, b"x" * rng.randrange(10), hlc.now(), rng.choice([None, 0.5]))
                elif r < 0.5:
                    store.apply("t", key, None, hlc.now(), None)
                elif r < 0.8:
                    entry = store.get("t", key)
                    assert entry is None or entry.data is not None
                elif r < 0.9:
                    store.set_expiry("t", key, rng.choice([None, 1.0, 0]))
                else:
                    store.peek("t", key)
                    store.remove("t", key)
                if rng.random() < 0.01:
                    clock.t += 0.25
                    store.expire()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count("t") <= 50
    check_invariants(store)


# ------------------------------------------------------------------ model-based test

KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
TTLS = st.sampled_from([None, -1.0, 0.0, 0.5, 1.0, 2.5, 7.0])
MAX_LEN = 3
TOMBSTONE_TTL = 10.0


class StoreModel(RuleBasedStateMachine):
    """LocalStore against a dict + explicit LRU list + eager expiry."""

    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock(0.0)
        self.store = LocalStore(clock=self.clock, tombstone_ttl=TOMBSTONE_TTL)
        self.store.create_bucket(BucketSpec("m", max_len=MAX_LEN))
        self.model: dict[str, tuple[bytes | None, tuple[int, str], float | None]] = {}
        self.lru: list[str] = []
        self.evictions = 0
        self.cleared = (0, "")

    def purge(self) -> None:
        now = self.clock.t
        for key, (_, _, exp) in list(self.model.items()):
            if exp is not None and exp <= now:
                del self.model[key]
                if key in self.lru:
                    self.lru.remove(key)

    def forget(self, key: str) -> None:
        self.model.pop(key, None)
        if key in self.lru:
            self.lru.remove(key)

    @rule(key=KEYS, data=st.sampled_from([None, b"x", b"y"]), n=st.integers(1, 12),
          node=st.sampled_from(["p", "q"]), ttl=TTLS)
    def apply(self, key: str, data: bytes | None, n: int, node: str, ttl: float | None) -> None:
        self.purge()
        now = self.clock.t
        version = (n, node)
        current = self.model.get(key)
        existed = current is not None and current[0] is not None
        if (current is not None and version <= current[1]) or version <= self.cleared:
            expected = (False, existed)
        else:
            expected = (True, existed)
            self.forget(key)
            if data is None or (ttl is not None and ttl <= 0):
                self.model[key] = (None, version, now + TOMBSTONE_TTL)
            else:
                self.model[key] = (data, version, None if ttl is None else now + ttl)
                self.lru.append(key)
                while len(self.lru) > MAX_LEN:
                    del self.model[self.lru.pop(0)]
                    self.evictions += 1
        assert self.store.apply("m", key, data, version, ttl) == expected

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        self.purge()
        entry = self.store.get("m", key)
        current = self.model.get(key)
        if current is None or current[0] is None:
            assert entry is None
        else:
            assert entry is not None
            assert (entry.data, entry.version, entry.expires_at) == current
            self.lru.remove(key)
            self.lru.append(key)

    @rule(keys=st.permutations(["a", "b", "c", "d", "e"]))
    def get_all(self, keys: list[str]) -> None:
        for key in keys:
            self.get(key)

    @rule(key=KEYS)
    def peek(self, key: str) -> None:
        self.purge()
        entry = self.store.peek("m", key)
        current = self.model.get(key)
        if current is None:
            assert entry is None
        else:
            assert entry is not None
            assert (entry.data, entry.version, entry.expires_at) == current

    @rule(keys=st.permutations(["a", "b", "c", "d", "e"]))
    def peek_all(self, keys: list[str]) -> None:
        for key in keys:
            self.peek(key)

    @rule(key=KEYS, ttl=TTLS)
    def set_expiry(self, key: str, ttl: float | None) -> None:
        self.purge()
        now = self.clock.t
        current = self.model.get(key)
        live = current is not None and current[0] is not None
        assert self.store.set_expiry("m", key, ttl) == live
        if live:
            assert current is not None
            if ttl is not None and ttl <= 0:
                self.forget(key)
                self.model[key] = (None, current[1], now + TOMBSTONE_TTL)
            else:
                self.model[key] = (current[0], current[1], None if ttl is None else now + ttl)
                self.lru.remove(key)
                self.lru.append(key)

    @rule(n=st.integers(0, 12), node=st.sampled_from(["p", "q"]))
    def clear(self, n: int, node: str) -> None:
        self.purge()
        version = (n, node)
        self.store.clear("m", version)
        self.cleared = max(self.cleared, version)
        for key, (_, entry_version, _) in list(self.model.items()):
            if entry_version <= self.cleared:
                self.forget(key)
        assert self.store.cleared("m") == self.cleared

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        self.store.remove("m", key)
        self.forget(key)

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.5, 10.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule()
    def expire(self) -> None:
        self.store.expire()

    @rule()
    def count_and_stats(self) -> None:
        self.purge()
        assert self.store.count("m") == len(self.lru)
        assert self.store.stats()["evictions"] == self.evictions
        items = {k: (e.data, e.version, e.expires_at) for k, e in self.store.items("m")}
        assert items == self.model

    @invariant()
    def agrees(self) -> None:
        # Inspects the internals without purging, so lazy expiry paths stay exercised.
        self.purge()
        now = self.clock.t
        b = self.store._buckets["m"]
        unexpired = [
            (k, e)
            for k, e in list(b.live.items()) + list(b.tombs.items())
            if e.expires_at is None or e.expires_at > now
        ]
        assert {k: (e.data, e.version, e.expires_at) for k, e in unexpired} == self.model
        assert [k for k, e in unexpired if not e.is_tombstone] == self.lru
        check_invariants(self.store)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------ clear versions, chunked work


def test_clear_with_a_version_refuses_older_writes(store: LocalStore) -> None:
    store.apply("b", "old", b"v", v(5), None)
    store.apply("b", "gone", None, v(6), None)
    store.apply("b", "new", b"v", v(20), 30.0)
    assert store.clear("b", v(10)) == 2
    assert store.peek("b", "old") is None and store.peek("b", "gone") is None
    assert store.get("b", "new") is not None  # newer than the clear: a write that followed it
    assert store.apply("b", "old", b"again", v(9), None) == (False, False)  # a late write, from before
    assert store.apply("b", "old", b"again", v(10), None) == (False, False)
    assert store.apply("b", "old", b"after", v(11), None) == (True, False)
    assert store.cleared("b") == v(10) and store.clear_versions() == {"b": v(10)}
    assert store.set_cleared("b", v(8)) is False  # clear versions only move forward
    assert store.cleared("b") == v(10)
    check_invariants(store)


def test_set_cleared_refuses_at_once_and_clear_purges_later(store: LocalStore) -> None:
    store.apply("b", "k", b"v", v(5), None)
    assert store.set_cleared("b", v(7)) is True
    assert store.get("b", "k") is not None  # still there until the purge
    assert store.apply("b", "k2", b"v", v(6), None) == (False, False)
    assert store.clear("b", v(7)) == 1
    assert store.peek("b", "k") is None
    with pytest.raises(BucketNotFound):
        store.set_cleared("nope", v(1))
    assert store.clear_versions() == {"b": v(7)}


def test_whole_bucket_work_releases_the_lock_between_chunks(clock: FakeClock) -> None:
    from mycel.store import CHUNK

    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("big"))
    total = CHUNK * 5 + 3
    for i in range(total):
        store.apply("big", f"k{i}", b"v", v(1), None)
    items = store.items("big")
    first = next(items)
    # between chunks the lock is free: another thread writes and reads without waiting
    writer = threading.Thread(target=lambda: store.apply("big", "k0", b"new", v(2), None))
    writer.start()
    writer.join(5)
    assert not writer.is_alive()
    rest = list(items)
    keys = [first[0]] + [k for k, _ in rest]
    assert len(keys) == len(set(keys)) == total  # each key once, and no RuntimeError for the mutation
    # removing keys mid-iteration: they are skipped, the others still come once
    items = store.items("big")
    next(items)
    for i in range(CHUNK * 2, CHUNK * 3):
        store.remove("big", f"k{i}")
    assert len(list(items)) == total - CHUNK - 1


def test_items_holds_the_lock_per_chunk(clock: FakeClock) -> None:
    from mycel.store import CHUNK

    class CountingLock:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.acquired = 0

        def __enter__(self) -> None:
            self.lock.acquire()
            self.acquired += 1

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    store = LocalStore(clock=clock)
    store.create_bucket(BucketSpec("big"))
    for i in range(CHUNK * 10):
        store.apply("big", f"k{i}", b"v", v(1), None)
    counting = CountingLock()
    store._lock = counting  # type: ignore[assignment]  # observe the lock holds only
    assert len(list(store.items("big"))) == CHUNK * 10
    assert counting.acquired >= 10  # one hold per chunk (and one for the key list), not one for all
    counting.acquired = 0
    assert store.clear("big", v(5)) == CHUNK * 10
    assert counting.acquired >= 10


def test_scan_keys_and_read(store: LocalStore, clock: FakeClock) -> None:
    store.apply("b", "a", b"v", v(1), None)
    store.apply("b", "short", b"v", v(1), 1.0)
    store.apply("b", "dead", None, v(1), None)
    assert sorted(store.keys("b")) == ["a", "short"]
    clock.t += 2
    assert store.live_keys("b", ["a", "short", "dead", "never"]) == ["a"]
    assert store.read("b", "dead").is_tombstone  # type: ignore[union-attr]
    assert store.read("b", "short") is None
    assert store.read("b", "a").data == b"v"  # type: ignore[union-attr]
    hits = store.stats()["hits"]
    store.get("b", "a")
    store.get("b", "missing")
    assert store.stats()["hits"] == hits + 1  # read() and misses are not hits


def test_infinite_ttl_everywhere(store: LocalStore) -> None:
    store.apply("b", "k", b"v", v(1), 5.0)
    assert store.set_expiry("b", "k", float("inf")) is True
    entry = store.peek("b", "k")
    assert entry is not None and entry.expires_at is None and store.remaining_ttl(entry) is None
    check_invariants(store)

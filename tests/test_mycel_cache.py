"""The distributed cache on real nodes over 127.0.0.1."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mycel import (
    BucketConflict,
    BucketNotFound,
    Cache,
    KeyNotFound,
    NotAnInteger,
    ValueTooLarge,
)
from mycel.placement import Placement

from .conftest import wait_for


@pytest.fixture
def make_caches(make_cluster):
    made: list[Cache] = []

    def make(count: int, **settings):
        nodes = make_cluster([f"m{i}" for i in range(count)])
        caches = [Cache(node, **settings) for node in nodes]
        made.extend(caches)
        return caches

    yield make
    for cache in made:
        cache.close(handoff=False)


@pytest.mark.parametrize("count", [3, 5])
def test_value_put_anywhere_is_read_everywhere(make_caches, count):
    caches = make_caches(count)
    caches[0].create_bucket("users")
    for i, writer in enumerate(caches):
        writer.put("users", f"user-{i}", {"id": i, "name": f"n{i}"})
    for reader in caches:
        for i in range(count):
            assert reader.get("users", f"user-{i}") == {"id": i, "name": f"n{i}"}
    # deletes are seen everywhere
    assert caches[-1].delete("users", "user-0") is True
    assert caches[-1].delete("users", "user-0") is False
    for reader in caches:
        with pytest.raises(KeyNotFound):
            reader.get("users", "user-0")
        assert reader.get("users", "user-0", "fallback") == "fallback"


def test_ttl_expiry_is_seen_from_every_node(make_caches):
    caches = make_caches(3)
    caches[0].create_bucket("short", ttl=0.4)
    caches[1].put("short", "default-ttl", 1)
    caches[1].put("short", "own-ttl", 2, ttl=30)
    caches[2].put("short", "forever", 3, ttl=None)  # None: the bucket default (0.4 s) applies
    for reader in caches:
        assert reader.get("short", "default-ttl") == 1

    def expired_everywhere(key: str) -> bool:
        return all(c.get("short", key, None) is None for c in caches)

    assert wait_for(lambda: expired_everywhere("default-ttl"), timeout=10)
    assert wait_for(lambda: expired_everywhere("forever"), timeout=10)
    assert all(c.get("short", "own-ttl") == 2 for c in caches)
    # set_ttl: shorten, then expire at once
    assert caches[0].set_ttl("short", "own-ttl", 0.3) is True
    assert wait_for(lambda: expired_everywhere("own-ttl"), timeout=10)
    assert caches[0].set_ttl("short", "missing", 5) is False
    caches[0].put("short", "gone-now", 1, ttl=60)
    assert caches[2].set_ttl("short", "gone-now", 0) is True
    assert expired_everywhere("gone-now")


def test_lru_bound_holds_on_each_node(make_caches):
    caches = make_caches(3, replicas=3)
    caches[0].create_bucket("small", max_len=10)
    for i in range(100):
        caches[i % 3].put("small", f"k{i}", i)
    for cache in caches:
        assert cache._store.count("small") == 10
    # the most recent writes are the ones kept
    for cache in caches:
        assert cache.get("small", "k99") == 99


def test_add_raced_from_16_threads_has_one_winner(make_caches):
    caches = make_caches(3)
    caches[0].create_bucket("locks")
    for round_ in range(5):
        key = f"lock-{round_}"
        start = threading.Barrier(16)

        def contend(i: int) -> bool:
            start.wait(10)
            return caches[i % 3].add("locks", key, f"owner-{i}")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(contend, range(16)))
        assert results.count(True) == 1
        winner = results.index(True)
        assert all(c.get("locks", key) == f"owner-{winner}" for c in caches)


def test_incr_from_16_threads_gives_exact_total(make_caches):
    caches = make_caches(3)
    caches[0].create_bucket("counters")
    caches[0].put("counters", "hits", 0)

    def bump(i: int) -> None:
        for _ in range(25):
            caches[i % 3].incr("counters", "hits")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(bump, range(16)))
    assert all(c.get("counters", "hits") == 400 for c in caches)
    assert caches[1].decr("counters", "hits", 100) == 300
    with pytest.raises(KeyNotFound):
        caches[2].incr("counters", "missing")
    caches[2].put("counters", "text", "abc")
    with pytest.raises(NotAnInteger):
        caches[0].incr("counters", "text")


def test_replica_down_keys_stay_readable_and_writable(make_caches):
    caches = make_caches(5, replicas=3)
    caches[0].create_bucket("data")
    keys = [f"key-{i}" for i in range(60)]
    caches[0].put_many("data", {k: k.upper() for k in keys})
    victim = caches[2]
    placement = Placement([c.node_id for c in caches])
    held = [k for k in keys if victim.node_id in placement.replicas("data", k, 3)]
    assert held  # the victim really is a replica of some keys
    victim.close(handoff=False)
    victim.node.shutdown()
    survivors = [c for c in caches if c is not victim]
    for reader in survivors:
        assert reader.get_many("data", keys) == {k: k.upper() for k in keys}
        for k in held[:5]:
            assert reader.get("data", k) == k.upper()
    for i, k in enumerate(held):
        survivors[i % 4].put("data", k, "new")  # quorum: 2 of the 3 replicas answer
    for reader in survivors:
        assert all(reader.get("data", k) == "new" for k in held)


def test_concurrent_writers_converge_on_one_version(make_caches):
    caches = make_caches(3)
    caches[0].create_bucket("hot")

    def write(i: int) -> None:
        for j in range(40):
            caches[i % 3].put("hot", "key", f"w{i}-{j}")

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(write, range(12)))

    def converged() -> bool:
        entries = [c._store.peek("hot", "key") for c in caches]
        return all(e is not None for e in entries) and len({(e.version, e.data) for e in entries}) == 1

    assert wait_for(converged, timeout=10)
    values = {c.get("hot", "key") for c in caches}
    assert len(values) == 1


def test_batch_operations(make_caches):
    caches = make_caches(5)
    caches[0].create_bucket("batch")
    data = {f"k{i}": i for i in range(300)}
    caches[1].put_many("batch", data)
    assert caches[3].get_many("batch", list(data) + ["missing"]) == data
    assert caches[4].delete_many("batch", [f"k{i}" for i in range(100)] + ["missing"]) == 100
    assert caches[2].get_many("batch", list(data)) == {f"k{i}": i for i in range(100, 300)}


def test_buckets_are_cluster_wide(make_caches):
    caches = make_caches(3)
    caches[1].create_bucket("shared", ttl=60, max_len=100)
    caches[2].create_bucket("shared", ttl=60, max_len=100)  # same settings: no-op
    for cache in caches:
        assert [b.name for b in cache.buckets()] == ["shared"]
    with pytest.raises(BucketConflict):
        caches[0].create_bucket("shared", ttl=5)
    # a definition only another member holds is found in its reply
    from mycel import BucketSpec

    caches[2]._store.create_bucket(BucketSpec("elsewhere", 10.0, None))
    with pytest.raises(BucketConflict, match="m2"):
        caches[0].create_bucket("elsewhere", ttl=5)
    assert not caches[0]._store.has_bucket("elsewhere")
    with pytest.raises(BucketNotFound):
        caches[0].get("nope", "k")
    with pytest.raises(BucketNotFound):
        caches[0].put("nope", "k", 1)


def test_bad_input_is_refused_clearly(make_caches):
    caches = make_caches(3, max_value_size=1000)
    caches[0].create_bucket("b")
    with pytest.raises(ValueTooLarge):
        caches[0].put("b", "big", b"x" * 2000)
    with pytest.raises(TypeError):
        caches[0].put("b", 42, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        caches[0].incr("b", "k", 1.5)  # type: ignore[arg-type]
    assert caches[1].get("b", "big", None) is None


def test_new_member_receives_its_keys(make_caches, make_cluster, ca):
    caches = make_caches(3, replicas=2)
    caches[0].create_bucket("grow")
    keys = {f"g{i}": i for i in range(200)}
    caches[0].put_many("grow", keys)
    from .conftest import start_node

    newcomer_node = start_node(ca, "m9")
    try:
        for cache in caches:
            newcomer_node.add_peer(cache.node_id, *cache.node.address)
        newcomer = Cache(newcomer_node, replicas=2)
        for cache in caches:
            cache.node.add_peer("m9", *newcomer_node.address)
        newcomer_node.ready(10)
        placement = Placement([c.node_id for c in caches] + ["m9"])
        owned = [k for k in keys if "m9" in placement.replicas("grow", k, 2)]
        assert owned
        assert wait_for(lambda: newcomer._store.has_bucket("grow")
                        and all(newcomer._store.peek("grow", k) is not None for k in owned), timeout=20)
        # keys that moved away from an old node are dropped there
        for cache in caches:
            for k in keys:
                if cache.node_id not in placement.replicas("grow", k, 2):
                    assert wait_for(lambda: cache._store.peek("grow", k) is None, timeout=10)
        assert newcomer.get_many("grow", list(keys)) == keys
        newcomer.close(handoff=False)
    finally:
        newcomer_node.shutdown()


def test_graceful_close_hands_keys_off(make_caches):
    caches = make_caches(4, replicas=1)
    caches[0].create_bucket("solo")
    keys = {f"s{i}": i for i in range(100)}
    caches[0].put_many("solo", keys)
    leaving = caches[3]
    mine = [k for k in keys if leaving._store.peek("solo", k) is not None]
    assert mine
    leaving.close(handoff=True)
    others = Placement([c.node_id for c in caches[:3]])
    for k in mine:
        holder = next(c for c in caches[:3] if c.node_id == others.replicas("solo", k, 1)[0])
        assert holder._store.get("solo", k) is not None


def test_quorum_reads_see_past_a_stale_replica(make_cluster):
    nodes = make_cluster(["q0", "q1", "q2"])
    fast = Cache(nodes[0])
    majority = Cache(nodes[1], read_quorum="majority")
    everyone = Cache(nodes[2], read_quorum="all")
    try:
        fast.create_bucket("b")
        fast.put("b", "k", "v1")
        stale_version = fast._store.peek("b", "k").version
        fast.put("b", "k", "v2")  # acknowledged by a majority (here: all three)

        def make_q0_stale() -> None:
            fast._store.remove("b", "k")
            fast._store.apply("b", "k", fast.serializer.dumps("v1"), stale_version, None)

        make_q0_stale()
        assert fast.get("b", "k") == "v1"  # a one-replica read answers from its stale local copy
        assert majority.get("b", "k") == "v2"  # any majority holds the newer version
        assert everyone.get("b", "k") == "v2"  # asks q0 too, and repairs it
        assert wait_for(lambda: fast._store.peek("b", "k").version > stale_version)
        assert fast.get("b", "k") == "v2"
        # a newer delete beats a stale value
        everyone.delete("b", "k")
        make_q0_stale()
        assert majority.get("b", "k", "gone") == "gone"
        assert everyone.get("b", "k", "gone") == "gone"
    finally:
        for cache in (fast, majority, everyone):
            cache.close(handoff=False)

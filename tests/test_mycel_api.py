"""The cache API the framework backends and the command line use: clear, ttl, infinite TTLs,
key scans, compare-and-delete, failed keys, figures, close, on real nodes over 127.0.0.1."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mycel import Cache, CacheClosed, CacheTimeout, KeyNotFound, QuorumNotReached
from mycel.placement import Placement
from mycel.protocol import ApplyRequest, ApplyResponse, Op, Record, decode_response, encode_request

from .conftest import start_node, wait_for
from .test_mycel_cache import make_caches  # noqa: F401  (a fixture)


def holders(caches: list[Cache], bucket: str, key: str) -> list[str]:
    """The nodes whose own store holds a live value of ``key``."""
    return [c.node_id for c in caches if (e := c._ctx.store.peek(bucket, key)) is not None and e.data is not None]


def apply_late(sender: Cache, node_id: str, record: Record) -> tuple[bool, bool]:
    """Deliver ``record`` to ``node_id`` as a replica write that arrives late (an APPLY request)."""
    raw = sender._app.request(encode_request(ApplyRequest([record])), node_id, 5)
    response = decode_response(Op.APPLY, raw)
    assert isinstance(response, ApplyResponse)
    return response.results[0]


# ------------------------------------------------------------------ clear


def test_clear_removes_every_key_everywhere_and_later_writes_stay(make_caches):
    caches = make_caches(3, replicas=2)
    caches[0].create_bucket("c")
    caches[0].put_many("c", {f"k{i}": i for i in range(300)})
    caches[1].clear("c")
    for cache in caches:
        assert cache.keys("c") == []
        assert cache.get_many("c", [f"k{i}" for i in range(300)]) == {}
        assert cache.get("c", "k1", None) is None
        assert cache._ctx.store.count("c") == 0
    caches[2].put("c", "after", 1)
    assert all(c.get("c", "after") == 1 for c in caches)
    assert all(c.stats()["clears"] == 1 for c in caches)


def test_no_write_older_than_the_clear_comes_back(make_caches):
    caches = make_caches(3, replicas=3)
    caches[0].create_bucket("c")
    caches[0].put("c", "k", "old")
    old = caches[0]._ctx.store.peek("c", "k")
    stale = Record("c", "k", old.data, old.version, None)
    caches[2].clear("c")
    # a replica write from before the clear, arriving late (in flight, or a handoff batch)
    for cache in caches:
        assert apply_late(caches[0], cache.node_id, stale) == (False, False)
    delivered, stopped = caches[0]._rebalancer.remote.deliver(caches[0]._app, caches[1].node_id, [stale], 5)
    assert (delivered, stopped) == (1, None)  # acknowledged (so the sender drops it) but not applied
    assert holders(caches, "c", "k") == []
    assert all(c.get("c", "k", None) is None for c in caches)


def test_a_hinted_write_from_before_the_clear_stays_cleared(make_caches):
    caches = make_caches(3, replicas=3)
    caches[0].create_bucket("c")
    down = caches[2]
    down._server.stop()  # its cache answers nothing: writes to it are hinted, the clear misses it
    caches[0].put("c", "k", "old")  # 2 of 3 acknowledge; a hint waits for the third
    assert caches[0].stats()["hints_pending"] == 1
    caches[1].clear("c")  # one node may miss it: every key still lost a quorum of its copies
    down._server.start()
    # the missed clear reaches it before the hint does (and the hint is older than the clear anyway)
    assert wait_for(lambda: down._ctx.store.cleared("c") == caches[1]._ctx.store.cleared("c"), timeout=20)
    assert wait_for(lambda: caches[0].stats()["hints_pending"] == 0, timeout=20)
    assert holders(caches, "c", "k") == []


def test_a_node_that_missed_the_clear_is_caught_up(make_caches):
    caches = make_caches(3, replicas=3)
    caches[0].create_bucket("c")
    caches[0].put_many("c", {f"k{i}": i for i in range(50)})
    late = caches[2]
    late._server.stop()
    caches[0].clear("c")
    assert late._ctx.store.count("c") == 50  # it did not hear of it
    late._server.start()
    assert wait_for(lambda: late._ctx.store.count("c") == 0, timeout=20)
    assert late.keys("c") == []


def test_clear_reaching_too_few_nodes_says_so(make_caches):
    caches = make_caches(3, replicas=3)
    caches[0].create_bucket("c")
    caches[0].put("c", "k", 1)
    for cache in caches[1:]:
        cache._server.stop()
    with pytest.raises(QuorumNotReached) as info:
        caches[0].clear("c")
    assert info.value.maybe_applied and info.value.acked == 1
    assert caches[0]._ctx.store.peek("c", "k") is None  # applied here, and retried for the others
    for cache in caches[1:]:
        cache._server.start()
    assert wait_for(lambda: all(c._ctx.store.count("c") == 0 for c in caches), timeout=20)


def test_clear_wins_over_a_write_from_a_node_whose_clock_runs_ahead(make_caches):
    caches = make_caches(3, replicas=1)
    caches[0].create_bucket("c")
    fast, clearing, holder = caches
    placement = Placement([c.node_id for c in caches])
    key = next(k for k in (f"k{i}" for i in range(100)) if placement.replicas("c", k, 1) == [holder.node_id])
    now = fast._ctx.clock.now()
    fast._ctx.clock.observe((now[0] + (5000 << 16), "elsewhere"))  # 5 s ahead of the others
    fast.put("c", key, "written before the clear")  # held by a third node; the clearing one never saw it
    assert clearing._ctx.clock.last() < holder._ctx.store.peek("c", key).version[0]
    clearing.clear("c")
    assert all(c.get("c", key, None) is None for c in caches)
    assert holders(caches, "c", key) == []
    clearing.put("c", key, "after")  # and writes after the clear are newer than it, from any node
    assert all(c.get("c", key) == "after" for c in caches)


def test_a_node_joining_after_a_clear_learns_it(make_caches, ca):
    caches = make_caches(3, replicas=2)
    caches[0].create_bucket("c")
    caches[0].put("c", "k", "old")
    entry = caches[0]._ctx.store.peek("c", "k") or caches[1]._ctx.store.peek("c", "k")
    stale = Record("c", "k", entry.data, entry.version, None)
    caches[0].clear("c")
    node = start_node(ca, "m9")
    try:
        for cache in caches:
            node.add_peer(cache.node_id, *cache.node.address)
            cache.node.add_peer("m9", *node.address)
        node.ready(20)
        newcomer = Cache(node, replicas=2)
        newcomer.ready(20)
        assert newcomer._ctx.store.cleared("c") == caches[0]._ctx.store.cleared("c")
        assert apply_late(caches[0], "m9", stale) == (False, False)
        assert newcomer.keys("c") == []
        newcomer.close(handoff=False)
    finally:
        node.shutdown()


# ------------------------------------------------------------------ ttl and infinite TTLs


def test_ttl_and_infinite_ttls(make_caches):
    caches = make_caches(3, replicas=1)
    caches[0].create_bucket("t", ttl=0.5)
    a, b = caches[0], caches[1]
    a.put("t", "default", 1)
    a.put("t", "forever", 1, ttl=math.inf)
    a.put("t", "own", 1, ttl=60)
    for reader in caches:  # holder or not
        assert 0 < reader.ttl("t", "default") <= 0.5
        assert reader.ttl("t", "forever") is None
        assert 59 < reader.ttl("t", "own") <= 60
        with pytest.raises(KeyNotFound):
            reader.ttl("t", "missing")
    assert b.add("t", "added", 1, ttl=math.inf) is True
    a.put("t", "counter", 1, ttl=math.inf)
    assert b.incr("t", "counter", 5) == 6  # incr keeps the TTL it had: none
    assert b.set_ttl("t", "own", math.inf) is True
    assert b.set_ttl("t", "own-default", 5) is False  # missing
    a.put("t", "reset", 1, ttl=math.inf)
    assert b.set_ttl("t", "reset", None) is True  # None: back to the bucket default
    assert 0 < a.ttl("t", "reset") <= 0.5
    assert wait_for(lambda: all(c.get("t", "default", None) is None and c.get("t", "reset", None) is None
                                for c in caches), timeout=10)
    time.sleep(0.1)  # past the bucket default for everything written above
    for reader in caches:
        assert reader.get_many("t", ["forever", "added", "counter", "own"]) == {
            "forever": 1, "added": 1, "counter": 6, "own": 1}
        assert reader.ttl("t", "counter") is None and reader.ttl("t", "own") is None
        with pytest.raises(KeyNotFound):
            reader.ttl("t", "default")
    with pytest.raises(ValueError):
        a.put("t", "nan", 1, ttl=float("nan"))
    with pytest.raises(TypeError):
        a.put("t", "bool", 1, ttl=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------ key scans


def test_keys_scans_every_node_each_key_once(make_caches):
    caches = make_caches(4, replicas=2)
    caches[0].create_bucket("s", max_len=None)
    data = {f"user:{i}": i for i in range(1200)}
    data.update({f"session:{i}": i for i in range(300)})
    caches[1].put_many("s", data)
    for cache in caches:
        assert sorted(cache.keys("s")) == sorted(data)
    listed = list(caches[2].iter_keys("s", "user:1*", page_size=7))
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(k for k in data if k.startswith("user:1"))
    assert sorted(caches[3].keys("s", "session:?")) == [f"session:{i}" for i in range(10)]
    assert caches[0].keys("s", "[!us]*") == []
    caches[0].delete_many("s", [f"session:{i}" for i in range(300)])
    caches[0].put("s", "brief", 1, ttl=0.2)
    assert "brief" in caches[1].keys("s", "b*")
    assert wait_for(lambda: caches[1].keys("s", "b*") == [], timeout=10)
    assert sorted(caches[3].keys("s")) == sorted(k for k in data if k.startswith("user:"))
    with pytest.raises(ValueError):
        caches[0].keys("s", page_size=0) if False else list(caches[0].iter_keys("s", page_size=0))


def test_key_scan_skips_a_node_that_does_not_answer_while_its_keys_have_other_replicas(make_caches):
    caches = make_caches(3, replicas=2)
    caches[0].create_bucket("s")
    data = {f"k{i}": i for i in range(200)}
    caches[0].put_many("s", data)
    caches[2]._server.stop()
    assert sorted(caches[0].keys("s")) == sorted(data)  # one node out of replicas=2: every key is still seen
    caches[1]._server.stop()
    with pytest.raises(CacheTimeout, match="did not answer"):
        caches[0].keys("s")


def test_a_scan_cursor_survives_writes_and_expires_when_idle(make_caches):
    caches = make_caches(2, replicas=2)
    caches[0].create_bucket("s")
    caches[0].put_many("s", {f"k{i}": i for i in range(100)})
    scan = caches[1].iter_keys("s", page_size=10)
    first = [next(scan) for _ in range(15)]
    caches[0].put_many("s", {f"new{i}": i for i in range(20)})  # writes during the scan
    rest = list(scan)
    seen = first + rest
    assert len(seen) == len(set(seen))
    assert {f"k{i}" for i in range(100)} <= set(seen)
    # a node that forgot a cursor (idle, or restarted) is scanned again; no key comes twice
    scan = caches[1].iter_keys("s", page_size=10)
    first = [next(scan) for _ in range(5)]
    for cache in caches:
        cache._server.scans._sessions.clear()
    seen = first + list(scan)
    assert len(seen) == len(set(seen)) == 120


# ------------------------------------------------------------------ compare-and-delete


def test_compare_and_delete_releases_only_its_holders_lock(make_caches):
    caches = make_caches(3)
    caches[0].create_bucket("locks")
    assert caches[1].add("locks", "lock", "token-1") is True
    assert caches[2].compare_and_delete("locks", "lock", "token-2") is False
    assert all(c.get("locks", "lock") == "token-1" for c in caches)
    assert caches[0].compare_and_delete("locks", "lock", "token-1") is True
    assert all(c.get("locks", "lock", None) is None for c in caches)
    assert caches[0].compare_and_delete("locks", "lock", "token-1") is False  # gone already
    caches[0].put("locks", "shared", {"owner": "a", "n": 1})
    start = threading.Barrier(8)

    def release(i: int) -> bool:
        start.wait(10)
        return caches[i % 3].compare_and_delete("locks", "shared", {"n": 1, "owner": "a"})

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(release, range(8))) == [False] * 7 + [True]


# ------------------------------------------------------------------ failed keys, figures, close


def test_put_many_names_the_keys_that_missed_their_quorum(make_caches):
    caches = make_caches(3, replicas=1)
    caches[0].create_bucket("p")
    down = caches[2]
    down._server.stop()
    data = {f"k{i}": i for i in range(60)}
    placement = Placement([c.node_id for c in caches])
    lost = sorted(k for k in data if placement.replicas("p", k, 1) == [down.node_id])
    assert lost
    with pytest.raises(QuorumNotReached) as info:
        caches[0].put_many("p", data)
    assert sorted(info.value.failed_keys) == lost
    assert info.value.maybe_applied is False  # refused: certainly not applied, and not replayed later
    assert caches[0].stats()["hints_pending"] == 0
    down._server.start()
    assert caches[1].get_many("p", list(data)) == {k: v for k, v in data.items() if k not in lost}


def test_stats_and_cluster_stats(make_caches):
    caches = make_caches(3, replicas=1)
    caches[0].create_bucket("f")
    caches[0].put_many("f", {f"k{i}": i for i in range(30)})
    local = next(k for k in (f"k{i}" for i in range(30)) if caches[0]._ctx.store.peek("f", k))
    remote = next(k for k in (f"k{i}" for i in range(30)) if not caches[0]._ctx.store.peek("f", k))
    before = caches[0].stats()
    caches[0].get("f", local)
    caches[0].get("f", remote)
    caches[0].get("f", "missing", None)
    after = caches[0].stats()
    assert after["hits"] == before["hits"] + 2 and after["misses"] == before["misses"] + 1
    for name in ("requests", "errors", "timeouts", "evictions", "handoff_keys", "hints_pending", "node_"):
        assert any(k.startswith(name) for k in after), name
    figures = caches[1].cluster_stats(timeout=5)
    assert sorted(figures) == [c.node_id for c in caches]
    assert sum(f["entries"]["f"] for f in figures.values()) == 30
    assert all(isinstance(v, int) for f in figures.values() for k, v in f.items() if k != "entries")


def test_every_call_after_close_raises_and_the_closed_copy_never_counts(make_caches):
    caches = make_caches(3, replicas=3, write_quorum="all")
    caches[0].create_bucket("x")
    caches[0].put("x", "k", 1)
    closed = caches[2]
    closed.close(handoff=False)
    calls = [
        lambda: closed.get("x", "k"), lambda: closed.get("nope", "k"), lambda: closed.put("x", "k", 2),
        lambda: closed.get_many("x", ["k"]), lambda: closed.put_many("x", {"k": 1}),
        lambda: closed.delete("x", "k"), lambda: closed.delete_many("x", ["k"]), lambda: closed.add("x", "n", 1),
        lambda: closed.incr("x", "k"), lambda: closed.decr("x", "k"), lambda: closed.set_ttl("x", "k", 1),
        lambda: closed.ttl("x", "k"), lambda: closed.compare_and_delete("x", "k", 1), lambda: closed.clear("x"),
        lambda: closed.keys("x"), lambda: closed.iter_keys("x"), lambda: closed.create_bucket("y"),
        lambda: closed.buckets(), lambda: closed.stats(), lambda: closed.cluster_stats(), lambda: closed.ready(1),
        lambda: closed.rebalance(),
    ]
    for call in calls:
        with pytest.raises(CacheClosed):
            call()
    closed.close()  # again: a no-op
    # still a member, but its copy no longer counts: "all" cannot be met, the others still read
    with pytest.raises(QuorumNotReached):
        caches[0].put("x", "k", 2)
    assert caches[1].get("x", "k") == 2  # reached the two others (and said the write may be applied)

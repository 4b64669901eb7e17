"""AsyncCache: the cache's operations as coroutines on the caller's event loop."""

from __future__ import annotations

import asyncio
import gc
import math
import threading

import pytest

from mycel import AsyncCache, CacheClosed, KeyNotFound, NotAnInteger, QuorumNotReached
from mycel.placement import Placement

from .test_mycel_cache import make_caches  # noqa: F401  (a fixture)


def test_every_operation_as_a_coroutine(make_caches):
    caches = make_caches(3, replicas=2)
    aios = [AsyncCache(c) for c in caches]

    async def scenario() -> None:
        await aios[0].create_bucket("a", ttl=60)
        await aios[1].put("a", "k", {"v": 1})
        assert [await a.get("a", "k") for a in aios] == [{"v": 1}] * 3
        assert await aios[2].get("a", "missing", "dflt") == "dflt"
        with pytest.raises(KeyNotFound):
            await aios[2].get("a", "missing")
        await aios[0].put_many("a", {f"m{i}": i for i in range(50)}, ttl=math.inf)
        assert await aios[1].get_many("a", [f"m{i}" for i in range(50)]) == {f"m{i}": i for i in range(50)}
        assert await aios[2].ttl("a", "m1") is None
        assert 59 < await aios[2].ttl("a", "k") <= 60
        assert await aios[0].add("a", "k", 2) is False
        assert await aios[0].add("a", "n", 10) is True
        assert await aios[1].incr("a", "n", 5) == 15
        assert await aios[2].decr("a", "n") == 14
        with pytest.raises(NotAnInteger):
            await aios[2].incr("a", "k")
        assert await aios[1].set_ttl("a", "n", math.inf) is True
        assert await aios[2].compare_and_delete("a", "n", 13) is False
        assert await aios[2].compare_and_delete("a", "n", 14) is True
        assert await aios[0].delete("a", "k") is True
        assert await aios[0].delete_many("a", ["m0", "m1", "nope"]) == 2
        assert sorted(await aios[1].keys("a", "m4*")) == ["m4"] + [f"m4{i}" for i in range(10)]
        assert len([k async for k in aios[2].iter_keys("a", page_size=3)]) == 48
        figures = await aios[0].cluster_stats()
        assert sorted(figures) == [c.node_id for c in caches]
        await aios[1].clear("a")
        assert await aios[2].keys("a") == []
        assert aios[0].stats()["clears"] == 1

    asyncio.run(scenario())


def test_a_local_hit_needs_no_await_and_remote_calls_no_worker_thread(make_caches):
    caches = make_caches(2, replicas=1)
    caches[0].create_bucket("h")
    placement = Placement([c.node_id for c in caches])
    keys = [f"k{i}" for i in range(20)]
    caches[0].put_many("h", dict.fromkeys(keys, "v"))
    local = next(k for k in keys if placement.replicas("h", k, 1) == [caches[0].node_id])
    remote = next(k for k in keys if placement.replicas("h", k, 1) == [caches[1].node_id])
    aio = AsyncCache(caches[0])
    coroutine = aio.get("h", local)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)  # finished at the first step: no await, no loop, no thread
    assert done.value.value == "v"

    async def remote_get() -> tuple[str, set[str]]:
        before = {t.name for t in threading.enumerate()}
        value = await aio.get("h", remote)
        return value, {t.name for t in threading.enumerate()} - before

    value, new_threads = asyncio.run(remote_get())
    assert value == "v" and not new_threads  # asyncio's default executor (sync_to_async) never started


def test_concurrent_coroutines_and_errors(make_caches, caplog):
    caches = make_caches(3, replicas=3, write_quorum="all")
    aio = AsyncCache(caches[0])

    async def scenario() -> None:
        await aio.create_bucket("c")
        await asyncio.gather(*(aio.put("c", f"k{i}", i) for i in range(40)))
        assert await asyncio.gather(*(aio.get("c", f"k{i}") for i in range(40))) == list(range(40))
        assert sum(await asyncio.gather(*(aio.incr("c", "k0") for _ in range(10)))) == sum(range(1, 11))
        caches[2]._server.stop()
        with pytest.raises(QuorumNotReached):
            await aio.put("c", "x", 1)
        caches[2]._server.start()
        caches[0].close(handoff=False)
        with pytest.raises(CacheClosed):
            await aio.get("c", "k1")
        with pytest.raises(CacheClosed):
            await aio.put("c", "k1", 1)

    asyncio.run(scenario())
    gc.collect()  # asyncio reports a future whose failure nobody read when it is collected
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    with pytest.raises(TypeError):
        AsyncCache("not a cache")  # type: ignore[arg-type]

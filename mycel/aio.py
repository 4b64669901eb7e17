"""AsyncCache: the cache's operations as coroutines, for asyncio applications."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from .cache import Cache
from .client import MISSING
from .errors import BucketNotFound
from .store import UNSET


class AsyncCache:
    """``AsyncCache(cache)``: the operations of a :class:`~mycel.cache.Cache` as coroutines.

    They run on the caller's event loop and await the node loop's request futures
    (``asyncio.wrap_future``), never a worker thread: a local hit is answered at once, without
    any thread hop. A read-modify-write whose primary is this node runs on the node's worker
    pool (it may wait for replicas). Semantics and errors are the Cache's; close the Cache
    itself when done.
    """

    def __init__(self, cache: Cache) -> None:
        if not isinstance(cache, Cache):
            raise TypeError(f"AsyncCache wraps a mycel.Cache, not {type(cache).__name__}")
        self.cache = cache
        self._client = cache._client
        self._arun = cache._arun

    def __repr__(self) -> str:
        return f"<AsyncCache of {self.cache!r}>"

    async def get(self, bucket: str, key: str, default: Any = MISSING) -> Any:
        """The value of ``key``; ``default`` (or KeyNotFound) when it is missing."""
        cache = self.cache
        if cache._local_reads:
            try:
                entry = cache._store.get(bucket, key)
            except BucketNotFound:
                steps = self._client.get(bucket, key, default)
            else:
                if entry is not None:
                    obj = entry.obj
                    return obj if obj is not UNSET else cache._ctx.value(entry)
                steps = self._client.get(bucket, key, default, looked=True)
        else:
            cache._check_open()
            steps = self._client.get(bucket, key, default)
        return await self._arun(steps)

    async def get_many(self, bucket: str, keys: Iterable[str]) -> dict[str, Any]:
        self.cache._check_open()
        return await self._arun(self._client.get_many(bucket, keys))

    async def ttl(self, bucket: str, key: str) -> float | None:
        self.cache._check_open()
        return await self._arun(self._client.ttl(bucket, key))

    async def put(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> None:
        self.cache._check_open()
        await self._arun(self._client.put(bucket, ((key, value),), ttl))

    set = put

    async def put_many(self, bucket: str, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        self.cache._check_open()
        await self._arun(self._client.put(bucket, mapping.items(), ttl))

    async def delete(self, bucket: str, key: str) -> bool:
        self.cache._check_open()
        return (await self._arun(self._client.delete(bucket, (key,))))[0]

    async def delete_many(self, bucket: str, keys: Iterable[str]) -> int:
        self.cache._check_open()
        return sum(await self._arun(self._client.delete(bucket, keys)))

    async def add(self, bucket: str, key: str, value: Any, ttl: float | None = None) -> bool:
        self.cache._check_open()
        return await self._arun(self._client.add(bucket, key, value, ttl))

    async def incr(self, bucket: str, key: str, delta: int = 1) -> int:
        self.cache._check_open()
        return await self._arun(self._client.incr(bucket, key, delta))

    async def decr(self, bucket: str, key: str, delta: int = 1) -> int:
        return await self.incr(bucket, key, -delta)

    async def set_ttl(self, bucket: str, key: str, ttl: float | None) -> bool:
        self.cache._check_open()
        return await self._arun(self._client.set_ttl(bucket, key, ttl))

    async def compare_and_delete(self, bucket: str, key: str, expected: Any) -> bool:
        self.cache._check_open()
        return await self._arun(self._client.compare_and_delete(bucket, key, expected))

    async def clear(self, bucket: str) -> None:
        self.cache._check_open()
        await self._arun(self._client.clear(bucket))

    async def create_bucket(self, name: str, ttl: float | None = None, max_len: int | None = None) -> None:
        self.cache._check_open()
        await self._arun(self._client.create_bucket(name, ttl, max_len))

    async def iter_keys(self, bucket: str, pattern: str | None = None, *, page_size: int = 1000
                        ) -> AsyncIterator[str]:
        """Every live key of ``bucket`` matching ``pattern``, each once (see Cache.iter_keys)."""
        self.cache._check_open()
        scan = await self._arun(self._client.key_scan(bucket, pattern, page_size))
        while (keys := await self._arun(self._client.scan_page(scan))) is not None:
            for key in keys:
                yield key

    async def keys(self, bucket: str, pattern: str | None = None) -> list[str]:
        return [key async for key in self.iter_keys(bucket, pattern)]

    async def cluster_stats(self, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        self.cache._check_open()
        return await self._arun(self._client.cluster_stats(timeout))

    def stats(self) -> dict[str, Any]:
        """This node's figures (no network: see Cache.stats)."""
        return self.cache.stats()

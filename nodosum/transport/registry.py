"""The registry of streams we opened, keyed by (node id, application id, stream name)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

StreamKey = tuple[str, str, str]


class OutboundStream:
    """A stream this node opened towards a peer for one application and name."""

    __slots__ = ("key", "conn", "stream_id", "closed")

    def __init__(self, key: StreamKey, conn: Any, stream_id: int) -> None:
        self.key = key
        self.conn = conn
        self.stream_id = stream_id
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<OutboundStream {self.key} id={self.stream_id} {state}>"


class StreamRegistry:
    """Open streams by key; creation is double-checked under a lock, so two
    threads never open two streams for one key, and a closed stream is replaced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[StreamKey, OutboundStream] = {}

    def get(self, key: StreamKey) -> OutboundStream | None:
        stream = self._streams.get(key)
        if stream is None or stream.closed:
            return None
        return stream

    def get_or_create(self, key: StreamKey, create: Callable[[], OutboundStream]) -> tuple[OutboundStream, bool]:
        """The open stream for ``key``, creating it with ``create()`` if needed.

        Returns the stream and whether it was created by this call."""
        stream = self._streams.get(key)
        if stream is not None and not stream.closed:
            return stream, False
        with self._lock:
            stream = self._streams.get(key)
            if stream is not None and not stream.closed:
                return stream, False
            stream = create()
            self._streams[key] = stream
            return stream, True

    def close(self, stream: OutboundStream) -> None:
        """Mark a stream closed and drop it (when its read side ends or fails)."""
        with self._lock:
            stream.closed = True
            if self._streams.get(stream.key) is stream:
                del self._streams[stream.key]

    def close_connection(self, conn: Any) -> list[OutboundStream]:
        """Close and drop every stream carried by ``conn``; returns them."""
        with self._lock:
            gone = [s for s in self._streams.values() if s.conn is conn]
            for stream in gone:
                stream.closed = True
                del self._streams[stream.key]
        return gone

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[OutboundStream]:
        with self._lock:
            return iter(list(self._streams.values()))

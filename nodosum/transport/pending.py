"""PendingRequests: requests sent and not answered yet, matched to responses by correlation id.

Sans-I/O: no clock (deadlines are passed in and expired by ``expire(now)``), no
sockets; connections and results are opaque to it.

Adapter contract: take an id with ``next_id()`` (from any thread) and encode it in
the REQUEST frame; ``add`` the request once its frame is sent on a connection;
``answer`` it when a RESPONSE with that id arrives on that connection; ``cancel``
it when its caller gives up; ``lost(conn)`` when the connection closes; and call
``expire(now)`` whenever ``now >= next_deadline()`` (re-read it after ``add``).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class PendingRequests:
    """In-flight requests of one node, by correlation id and by connection."""

    __slots__ = ("_entries", "_by_conn", "_deadlines", "next_id")

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}  # correlation id -> (result, connection)
        self._by_conn: dict[Any, set[int]] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, correlation id), answered ones included
        # one sequence for every application of the node; ``next`` on a count is atomic in CPython
        self.next_id = itertools.count(1).__next__

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, correlation_id: int, result: Any, conn: Any, deadline: float | None = None) -> None:
        self._entries[correlation_id] = (result, conn)
        ids = self._by_conn.get(conn)
        if ids is None:
            ids = self._by_conn[conn] = set()
        ids.add(correlation_id)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, correlation_id))

    def answer(self, correlation_id: int, conn: Any) -> Any:
        """The result waiting for this response, or None (unknown id, or asked on another connection)."""
        entry = self._entries.get(correlation_id)
        if entry is None or entry[1] is not conn:
            return None
        self._remove(correlation_id, entry)
        return entry[0]

    def cancel(self, correlation_id: int) -> tuple[Any, Any] | None:
        """Forget a request its caller gave up on; returns (result, connection) if it was pending."""
        entry = self._entries.get(correlation_id)
        if entry is not None:
            self._remove(correlation_id, entry)
        return entry

    def lost(self, conn: Any) -> list[Any]:
        """Every result waiting on ``conn`` (which closed), forgotten."""
        ids = self._by_conn.pop(conn, ())
        entries = self._entries
        return [entries.pop(cid)[0] for cid in ids]

    def in_flight(self, conn: Any) -> int:
        ids = self._by_conn.get(conn)
        return 0 if ids is None else len(ids)

    def expire(self, now: float) -> list[tuple[Any, Any]]:
        """(result, connection) of every request whose deadline has passed, forgotten."""
        expired = []
        deadlines, entries = self._deadlines, self._entries
        while deadlines and deadlines[0][0] <= now:
            _, cid = heapq.heappop(deadlines)
            entry = entries.get(cid)
            if entry is not None:
                self._remove(cid, entry)
                expired.append(entry)
        return expired

    def next_deadline(self) -> float | None:
        deadlines, entries = self._deadlines, self._entries
        while deadlines and deadlines[0][1] not in entries:
            heapq.heappop(deadlines)  # answered in the meantime
        return deadlines[0][0] if deadlines else None

    def clear(self) -> list[Any]:
        """Every waiting result, forgotten (shutdown)."""
        results = [result for result, _ in self._entries.values()]
        self._entries.clear()
        self._by_conn.clear()
        self._deadlines.clear()
        return results

    def _remove(self, correlation_id: int, entry: tuple[Any, Any]) -> None:
        del self._entries[correlation_id]
        ids = self._by_conn[entry[1]]
        ids.discard(correlation_id)
        if not ids:
            del self._by_conn[entry[1]]

"""Key scans: every live key of a bucket, across the nodes, in bounded pages.

Server side, :class:`ScanSessions`: a scan starts with a snapshot of the bucket's key list;
each SCAN request returns the next page of it (checking each key is still live, ``CHUNK`` keys
per store lock hold) and a cursor naming the session and the position. Sessions idle for
``SESSION_IDLE`` seconds, or beyond ``MAX_SESSIONS``, are forgotten: their cursor then gets a
CURSOR_EXPIRED error and the client starts that node again.

Client side, :class:`KeyScan` visits the cache nodes one after the other and yields each key
once (a key lives on several replicas). A key present for the whole scan is yielded exactly
once; one written or deleted during it may or may not be. Up to ``replicas - 1`` nodes that do
not answer are skipped (every key still has a replica that answered); more raise CacheTimeout.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CacheTimeout
from .protocol import ErrorCode, ErrorResponse, ScanRequest, ScanResponse, encode_request
from .remote import CallFailed
from .store import CHUNK, LocalStore

MAX_SESSIONS = 64
SESSION_IDLE = 60.0  # seconds
MAX_PAGE = 10_000  # keys per page, at most
PAGE_BYTES = 1024 * 1024  # and about this many bytes of keys
EXAMINE = 10  # a page examines at most EXAMINE times its size of keys (a rare pattern: short pages)
RESTARTS = 3  # times one node's scan restarts after its cursor expired


def matcher(pattern: str | None) -> Callable[[str], object]:
    """A predicate for keys matching the glob ``pattern`` (fnmatch syntax, case-sensitive)."""
    if pattern is None:
        return lambda key: True
    return re.compile(fnmatch.translate(pattern)).match


@dataclass
class _Session:
    bucket: str
    pattern: str | None
    match: Callable[[str], object]
    keys: list[str]
    used: float
    position: int = 0


class ScanSessions:
    """This node's open scans (thread-safe; the clock is injectable)."""

    def __init__(self, store: LocalStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[int, _Session] = OrderedDict()

    def page(self, request: ScanRequest) -> ScanResponse | ErrorResponse:
        """The next page of ``request``'s scan (BucketNotFound if there is no such bucket)."""
        now = self._clock()
        count = max(1, min(request.count, MAX_PAGE))
        session_id, position = request.cursor >> 32, request.cursor & 0xFFFFFFFF
        with self._lock:
            self._forget_idle(now)
            if request.cursor == 0:
                session_id, session = self._open(request, now)
            else:
                found = self._sessions.pop(session_id, None)
                if found is None or (found.bucket, found.pattern, found.position) != (
                        request.bucket, request.pattern, position):
                    return ErrorResponse(ErrorCode.CURSOR_EXPIRED, f"scan cursor {request.cursor} is not known here "
                                         "(idle too long, or this node restarted)")
                session = found
        keys, done = self._read(session, count)
        session.used = self._clock()
        if done:
            return ScanResponse(keys, 0)
        with self._lock:
            self._sessions[session_id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return ScanResponse(keys, (session_id << 32) | session.position)

    def __len__(self) -> int:
        return len(self._sessions)

    def _open(self, request: ScanRequest, now: float) -> tuple[int, _Session]:
        session_id = secrets.randbits(32) or 1  # random: a cursor from before a restart rarely matches
        keys = self._store.keys(request.bucket)
        return session_id, _Session(request.bucket, request.pattern, matcher(request.pattern), keys, now)

    def _read(self, session: _Session, count: int) -> tuple[list[str], bool]:
        """Up to ``count`` live matching keys from the session's position; and whether it is done."""
        keys, match, store = session.keys, session.match, self._store
        page: list[str] = []
        size = 0
        stop = min(len(keys), session.position + count * EXAMINE)
        while session.position < stop and len(page) < count and size < PAGE_BYTES:
            end = min(stop, session.position + min(CHUNK, count - len(page)))
            for key in store.live_keys(session.bucket, [k for k in keys[session.position:end] if match(k)]):
                page.append(key)
                size += len(key) + 2
            session.position = end
        return page, session.position >= len(keys)

    def _forget_idle(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.used < SESSION_IDLE:
                return
            self._sessions.popitem(last=False)


class KeyScan:
    """The client's state of a scan over ``nodes``: where it is, and the keys yielded so far."""

    def __init__(self, bucket: str, pattern: str | None, page_size: int, nodes: list[str], tolerated: int) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, not {page_size!r}")
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str or None, not {type(pattern).__name__}")
        self.bucket = bucket
        self.pattern = pattern
        self.page_size = min(page_size, MAX_PAGE)
        self.nodes = list(nodes)
        self.tolerated = tolerated
        self.cursor = 0
        self.failed: list[CallFailed] = []
        self._seen: set[str] = set()
        self._restarts = 0

    @property
    def node_id(self) -> str | None:
        """The node the next page comes from (None: the scan is over)."""
        return self.nodes[0] if self.nodes else None

    def request(self) -> bytes:
        return encode_request(ScanRequest(self.bucket, self.pattern, self.cursor, self.page_size))

    def accept(self, response: ScanResponse) -> list[str]:
        """The page's keys not yielded before; moves on to the next page (or node)."""
        fresh = [key for key in response.keys if key not in self._seen]
        self._seen.update(fresh)
        self.cursor = response.cursor
        if response.cursor == 0:
            self._next_node()
        return fresh

    def expired(self) -> bool:
        """The node forgot our cursor: start it again (True), unless that happened too often."""
        self._restarts += 1
        self.cursor = 0
        return self._restarts <= RESTARTS

    def node_failed(self, failed: CallFailed) -> None:
        """Skip the node, or raise CacheTimeout once more nodes failed than the scan tolerates."""
        self.failed.append(failed)
        if len(self.failed) > self.tolerated:
            raise CacheTimeout(f"key scan of bucket {self.bucket!r}: {len(self.failed)} nodes did not answer "
                               f"({'; '.join(map(str, self.failed))}); keys only they hold would be missed")
        self._next_node()

    def _next_node(self) -> None:
        self.nodes.pop(0)
        self.cursor = 0
        self._restarts = 0

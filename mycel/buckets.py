"""The bucket catalog: bucket definitions and clear versions, the same on every member.

``create_bucket`` on any node makes the bucket known everywhere; members exchange their lists
(a BUCKETS request, answered with the responder's list) when one joins, before a handoff, when
a node meets a bucket it does not know, with a random member every ``SYNC_INTERVAL``, and with
the members that missed a clear until they answer. Both sides of an exchange learn what the
other knows; two definitions of one name with different settings are a conflict, logged and
counted where they meet and raised by ``create_bucket``.

A clear travels the same way, as the bucket's *clear version*: every node that learns it
refuses writes at or below it at once and purges what it holds below it (before answering,
when the clear itself asks; on the maintenance thread when an exchange brings it).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import random
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .errors import BucketConflict, BucketNotFound
from .protocol import BucketsRequest, BucketsResponse, ErrorResponse, Op, encode_request
from .remote import FAILURES, CallFailed, Remote, Steps, Wait
from .store import BucketSpec
from .versions import Version

if TYPE_CHECKING:
    from .context import CacheContext

logger = logging.getLogger(__name__)

FETCH_FROM = 3  # members asked when this node meets a bucket it does not know
SYNC_INTERVAL = 30.0  # seconds between two exchanges with a random member

Answers = dict[str, BucketsResponse | ErrorResponse | None]


class BucketCatalog:
    """Creates buckets cluster-wide and keeps this node's definitions in step with the others'."""

    def __init__(self, ctx: CacheContext, remote: Remote) -> None:
        self.ctx = ctx
        self.remote = remote
        self.wake: Callable[[], None] = lambda: None  # the maintenance thread's, once it exists
        self._lock = threading.Lock()
        self._purge_due: set[str] = set()  # buckets with a newer clear version, not purged yet
        self._unsynced: set[str] = set()  # members that missed a clear

    def spec(self, bucket: str) -> Steps[BucketSpec]:
        """The bucket's settings, asking a few members when this node does not know it."""
        store = self.ctx.store
        if not store.has_bucket(bucket):
            yield from self.exchange(self.ctx.others()[:FETCH_FROM])
        return store.bucket(bucket)

    def create(self, spec: BucketSpec) -> Steps[None]:
        """Create ``spec`` on every member (idempotent; other settings anywhere → BucketConflict)."""
        store = self.ctx.store
        existing = store.has_bucket(spec.name) and store.bucket(spec.name)
        if existing and existing != spec:
            raise BucketConflict(f"bucket {spec.name!r} exists as {describe(existing)}, not {describe(spec)}")
        answers = yield from self.exchange(self.ctx.others(), [spec], learn=False)
        for node_id, response in answers.items():
            if isinstance(response, ErrorResponse):
                raise response.to_exception()
            if response is None:
                logger.info("bucket %r not confirmed by %s (it learns it when it syncs)", spec.name, node_id)
                continue
            theirs = next((b for b in response.specs if b.name == spec.name), None)
            if theirs is not None and theirs != spec:
                raise BucketConflict(f"bucket {spec.name!r} exists on {node_id!r} as {describe(theirs)}, "
                                     f"not {describe(spec)}")
        store.create_bucket(spec)

    def exchange(self, node_ids: Iterable[str], specs: list[BucketSpec] | None = None, *,
                 cleared: dict[str, Version] | None = None, learn: bool = True,
                 timeout: float | None = None, include_self: bool = False) -> Steps[Answers]:
        """Send ``specs`` (default: every bucket here, with their clear versions) to
        ``node_ids`` and learn their lists; returns each answer (None: none in time)."""
        store = self.ctx.store
        if specs is None:
            request = BucketsRequest(store.buckets(), cleared=store.clear_versions())
        else:
            request = BucketsRequest(specs, cleared=cleared or {})
        timeout = self.ctx.settings.remote_timeout if timeout is None else timeout
        futures = self._start(node_ids, encode_request(request), timeout, include_self)
        answers: Answers = dict.fromkeys(futures.values())
        if futures:
            yield Wait(futures, timeout + 1, all=True)
        for fut, node_id in futures.items():
            if fut.done():
                answers[node_id] = self._answer(node_id, fut, learn)
        return answers

    def sync(self, node_ids: Iterable[str], fresh: bool = False) -> None:
        """Exchange lists with ``node_ids`` in the background (``fresh``: this cache has just
        started empty, and members that count it as a key holder hand it its share)."""
        store = self.ctx.store
        request = encode_request(BucketsRequest(store.buckets(), fresh, store.clear_versions()))
        for fut, node_id in self._start(node_ids, request, self.ctx.settings.remote_timeout).items():
            fut.add_done_callback(functools.partial(self._learn_answer, node_id))

    def learn(self, specs: Iterable[BucketSpec], cleared: dict[str, Version] | None = None, *,
              purge: bool) -> None:
        """Create the buckets this node does not know yet (conflicts are logged and counted) and
        take on newer clear versions, purging at once with ``purge`` (never on the loop thread),
        else soon on the maintenance thread."""
        store = self.ctx.store
        for spec in specs:
            try:
                store.create_bucket(spec)
            except BucketConflict as exc:
                self.ctx.counters.inc("bucket_conflicts")
                logger.warning("conflicting definitions of bucket %r: %s", spec.name, exc)
        for bucket, version in (cleared or {}).items():
            self.ctx.clock.observe(version)
            with self._lock:
                try:
                    newer = store.set_cleared(bucket, version)
                except BucketNotFound:
                    continue  # unknown here: nothing to purge, and it comes with its spec later
                if not newer and bucket not in self._purge_due:
                    continue
                if purge:
                    self._purge_due.discard(bucket)
                else:
                    self._purge_due.add(bucket)
            if newer:
                self.ctx.counters.inc("clears")
                logger.info("bucket %r cleared (version %s)", bucket, version)
            if purge:
                store.clear(bucket, store.cleared(bucket))
            else:
                self.wake()

    def state(self) -> BucketsResponse:
        """This node's answer to an exchange: its buckets, clear versions and clock."""
        store = self.ctx.store
        return BucketsResponse(store.buckets(), store.clear_versions(), self.ctx.clock.last())

    def missed_clear(self, node_ids: Iterable[str]) -> None:
        """Keep exchanging with ``node_ids`` until they answer (they did not acknowledge a clear)."""
        with self._lock:
            self._unsynced.update(n for n in node_ids if n != self.ctx.node_id)

    # -- maintenance tasks -----------------------------------------------------------------------
    def purge_due(self) -> None:
        """Purge the buckets whose newer clear version came with an exchange."""
        with self._lock:
            due, self._purge_due = self._purge_due, set()
        for bucket in due:
            self.ctx.store.clear(bucket, self.ctx.store.cleared(bucket))

    def resync(self) -> None:
        """Exchange with the members that missed a clear (until they answer)."""
        members = set(self.ctx.app.nodes())
        with self._lock:
            self._unsynced &= members
            targets = list(self._unsynced)
        if not targets:
            return
        answers = self.remote.run(self.exchange(targets))
        with self._lock:
            self._unsynced -= {n for n, answer in answers.items() if isinstance(answer, BucketsResponse)}

    def sync_random(self) -> None:
        """Exchange with one random member: what one node missed reaches it eventually."""
        others = self.ctx.others()
        if others:
            self.remote.run(self.exchange([random.choice(others)]))

    # -- internals ----------------------------------------------------------------------------------
    def _start(self, node_ids: Iterable[str], request: bytes, timeout: float, include_self: bool = False
               ) -> dict[concurrent.futures.Future[bytes], str]:
        futures = {}
        for node_id in node_ids:
            if node_id == self.ctx.node_id and not include_self:
                continue
            try:
                futures[self.ctx.primary_app.request_future(request, node_id, timeout)] = node_id
            except FAILURES as exc:
                logger.debug("bucket exchange with %s not started: %s", node_id, self.remote.failure(exc, node_id))
        return futures

    def _learn_answer(self, node_id: str, fut: concurrent.futures.Future[bytes]) -> None:
        self._answer(node_id, fut, learn=True)

    def _answer(self, node_id: str, fut: concurrent.futures.Future[bytes], learn: bool
                ) -> BucketsResponse | ErrorResponse | None:
        try:
            response = self.remote.result(Op.BUCKETS, node_id, fut)
        except CallFailed as failed:
            logger.debug("bucket exchange with %s failed: %s", node_id, failed)
            return None
        if isinstance(response, ErrorResponse):
            logger.warning("bucket exchange: %s reports %s", node_id, response.message)
            self.ctx.counters.inc("bucket_conflicts")
            return response
        assert isinstance(response, BucketsResponse)
        self.ctx.clock.observe((response.clock, node_id))
        if learn:
            # may run on the loop thread (a done callback): purging waits for the maintenance thread
            self.learn(response.specs, response.cleared, purge=False)
        return response


def describe(spec: BucketSpec) -> str:
    return f"(ttl={spec.ttl}, max_len={spec.max_len})"

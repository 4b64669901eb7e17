"""The bucket catalog: bucket definitions, the same on every member.

``create_bucket`` on any node makes the bucket known everywhere; members exchange their lists
(a BUCKETS request, answered with the responder's list) when one joins, before a handoff, and
when a node meets a bucket it does not know. Both sides of an exchange learn what the other
knows; two definitions of one name with different settings are a conflict, logged and counted
where they meet and raised by ``create_bucket``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import BucketConflict
from .protocol import BucketsRequest, BucketsResponse, ErrorResponse, Op, encode_request
from .remote import FAILURES, CallFailed, Remote, Steps, Wait
from .store import BucketSpec

if TYPE_CHECKING:
    from .context import CacheContext

logger = logging.getLogger(__name__)

FETCH_FROM = 3  # members asked when this node meets a bucket it does not know


class BucketCatalog:
    """Creates buckets cluster-wide and keeps this node's definitions in step with the others'."""

    def __init__(self, ctx: CacheContext, remote: Remote) -> None:
        self.ctx = ctx
        self.remote = remote

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

    def exchange(self, node_ids: Iterable[str], specs: list[BucketSpec] | None = None, *, learn: bool = True
                 ) -> Steps[dict[str, BucketsResponse | ErrorResponse | None]]:
        """Send ``specs`` (default: every bucket here) to ``node_ids`` and learn their lists;
        returns each node's answer (None if it gave none in time)."""
        request = encode_request(BucketsRequest(self.ctx.store.buckets() if specs is None else specs))
        futures = self._start(node_ids, request)
        answers: dict[str, BucketsResponse | ErrorResponse | None] = dict.fromkeys(futures.values())
        if futures:
            yield Wait(futures, self.ctx.settings.remote_timeout + 1, all=True)
        for fut, node_id in futures.items():
            if fut.done():
                answers[node_id] = self._answer(node_id, fut, learn)
        return answers

    def sync(self, node_ids: Iterable[str], fresh: bool = False) -> None:
        """Exchange lists with ``node_ids`` in the background (``fresh``: this cache has just
        started empty, and members that count it as a key holder hand it its share)."""
        request = encode_request(BucketsRequest(self.ctx.store.buckets(), fresh))
        for fut, node_id in self._start(node_ids, request).items():
            fut.add_done_callback(functools.partial(self._learn_answer, node_id))

    def learn(self, specs: Iterable[BucketSpec]) -> None:
        """Create the buckets this node does not know yet; conflicts are logged and counted."""
        for spec in specs:
            try:
                self.ctx.store.create_bucket(spec)
            except BucketConflict as exc:
                self.ctx.counters.inc("bucket_conflicts")
                logger.warning("conflicting definitions of bucket %r: %s", spec.name, exc)

    def _start(self, node_ids: Iterable[str], request: bytes) -> dict[concurrent.futures.Future[bytes], str]:
        futures = {}
        for node_id in node_ids:
            if node_id == self.ctx.node_id:
                continue
            try:
                futures[self.ctx.app.request_future(request, node_id, self.ctx.settings.remote_timeout)] = node_id
            except FAILURES as exc:
                logger.debug("bucket sync with %s not started: %s", node_id, self.remote.failure(exc, node_id))
        return futures

    def _learn_answer(self, node_id: str, fut: concurrent.futures.Future[bytes]) -> None:
        self._answer(node_id, fut, learn=True)

    def _answer(self, node_id: str, fut: concurrent.futures.Future[bytes], learn: bool
                ) -> BucketsResponse | ErrorResponse | None:
        try:
            response = self.remote.result(Op.BUCKETS, node_id, fut)
        except CallFailed as failed:
            logger.debug("bucket sync with %s failed: %s", node_id, failed)
            return None
        if isinstance(response, ErrorResponse):
            logger.warning("bucket sync: %s reports %s", node_id, response.message)
            self.ctx.counters.inc("bucket_conflicts")
            return response
        assert isinstance(response, BucketsResponse)
        if learn:
            self.learn(response.specs)
        return response


def describe(spec: BucketSpec) -> str:
    return f"(ttl={spec.ttl}, max_len={spec.max_len})"

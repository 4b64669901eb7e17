"""Remote calls between cache nodes: the one place where transport failures become outcomes and errors.

Client operations are written once, as generators that yield *steps* — :class:`Call` (one
request, its decoded response sent back) and :class:`Wait` (until some request futures are
done) — and return their result. :meth:`Remote.run` drives them from a blocking caller;
:meth:`Remote.arun` awaits the same steps on an asyncio loop (``asyncio.wrap_future`` over the
node loop's futures, never a thread hop).

Every failure of a call to another node is :class:`CallFailed`, whatever the transport raised,
with an :class:`Outcome` saying whether the request may have been applied there. An operation
catches only that. Failures of this node itself (its node stopped, a blocking call from the
node's loop thread) are not call failures: they propagate, as :class:`~mycel.errors.CacheClosed`
or nodosum's own error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from nodosum import (
    Application,
    BackpressureError,
    Counters,
    MessageTooLarge,
    NodeNotRunning,
    NodeUnreachable,
    NodosumError,
    RemoteError,
    RequestTimeout,
)

from .errors import CacheClosed, ProtocolError
from .protocol import ApplyRequest, ErrorCode, ErrorResponse, Op, Record, Response, decode_response, encode_request

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a request to another node can fail with (asyncio.wrap_future turns the
#: concurrent CancelledError into asyncio's, which is never caught: cancellation propagates).
FAILURES = (NodosumError, TimeoutError, concurrent.futures.CancelledError)

#: Records and bytes per APPLY request when many records go to one node (hints, handoff, batches).
BATCH_RECORDS = 500
BATCH_BYTES = 4 * 1024 * 1024  # well under nodosum's default max_frame_size (8 MiB)


class Outcome(enum.Enum):
    """What a failed call tells about the request."""

    NOT_SENT = "not sent"  # it never reached the node: certainly not applied, try another
    REFUSED = "refused"  # the node answered that it cannot take it (no cache, closing): not applied
    UNKNOWN = "unknown"  # sent without a usable answer (timeout, garbage): it may have been applied


class CallFailed(Exception):
    """A call to ``node_id`` failed; internal to mycel, never raised by a Cache method."""

    def __init__(self, outcome: Outcome, node_id: str, cause: BaseException | str) -> None:
        super().__init__(f"{node_id}: {cause}")
        self.outcome = outcome
        self.node_id = node_id
        self.cause = cause


@dataclass(slots=True)
class Call:
    """Send ``payload`` to ``node_id`` and get back its decoded ``op`` response.

    ``local``: for a call to this node, a function the blocking driver runs in place instead
    (no thread hop); the async driver sends the request to this node's worker pool, because
    the function may block.
    """

    app: Application
    op: Op
    payload: bytes
    node_id: str
    timeout: float
    local: Callable[[], bytes] | None = None


@dataclass(slots=True)
class Wait:
    """Wait up to ``timeout`` seconds for the first of ``futures`` (or all of them); get back
    ``(done, pending)``."""

    futures: Collection[concurrent.futures.Future[bytes]]
    timeout: float
    all: bool = False


Step = Call | Wait
Steps = Generator[Step, Any, T]


class Remote:
    """Classifies call failures (counting them) and drives step generators."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    # -- failures ---------------------------------------------------------------------------------
    def failure(self, exc: BaseException, node_id: str) -> CallFailed:
        """The CallFailed that ``exc`` from a call to ``node_id`` stands for; this node's own
        failures are raised instead."""
        if isinstance(exc, NodeNotRunning):
            raise CacheClosed(f"this cache's node is not running: {exc}") from exc
        if isinstance(exc, (NodeUnreachable, BackpressureError, MessageTooLarge)):
            outcome = Outcome.NOT_SENT
        elif isinstance(exc, RemoteError):
            outcome = Outcome.REFUSED  # its handler raised, or it has no cache (yet, or any more)
        elif isinstance(exc, (RequestTimeout, TimeoutError, concurrent.futures.CancelledError)):
            self.counters.inc("timeouts")
            outcome = Outcome.UNKNOWN
        else:  # LoopThreadError, ApplicationError...: a mistake on this side, not the peer's failure
            raise exc
        self.counters.inc("remote_failures")
        return CallFailed(outcome, node_id, exc)

    def response(self, op: Op, node_id: str, raw: bytes) -> Response:
        """The decoded response; CallFailed if it is garbage or says the node's cache is closed."""
        try:
            response = decode_response(op, raw)
        except ProtocolError as exc:
            self.counters.inc("bad_responses")
            logger.warning("undecodable %s response from %s: %s", op.name, node_id, exc)
            raise CallFailed(Outcome.UNKNOWN, node_id, exc) from None
        if isinstance(response, ErrorResponse) and response.code == ErrorCode.CLOSED:
            raise CallFailed(Outcome.REFUSED, node_id, response.message)
        return response

    def result(self, op: Op, node_id: str, fut: concurrent.futures.Future[bytes]) -> Response:
        """The decoded response of a done request future, or CallFailed."""
        try:
            raw = fut.result(0)
        except FAILURES as exc:
            raise self.failure(exc, node_id) from exc
        return self.response(op, node_id, raw)

    # -- drivers ------------------------------------------------------------------------------
    def run(self, steps: Steps[T]) -> T:
        """Drive ``steps`` to their result, blocking this thread on each step."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]  # StopIteration.value is Any
            reply = error = None
            if type(step) is Call:
                try:
                    if step.local is not None:
                        reply = self.response(step.op, step.node_id, step.local())
                    else:
                        reply = self.call(step.app, step.op, step.payload, step.node_id, step.timeout)
                except CallFailed as failed:
                    error = failed
            else:
                assert type(step) is Wait
                reply = _wait(step)

    async def arun(self, steps: Steps[T]) -> T:
        """Drive ``steps`` on the running asyncio loop, awaiting the node loop's futures."""
        wrapped: dict[concurrent.futures.Future[bytes], asyncio.Future[bytes]] = {}
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]  # StopIteration.value is Any
            reply = error = None
            if type(step) is Call:
                try:
                    raw = await asyncio.wrap_future(step.app.request_future(step.payload, step.node_id,
                                                                            step.timeout))
                except FAILURES as exc:
                    error = self.failure(exc, step.node_id)
                    continue
                try:
                    reply = self.response(step.op, step.node_id, raw)
                except CallFailed as failed:
                    error = failed
            else:
                assert type(step) is Wait
                if not step.futures:
                    reply = (set(), set())
                    continue
                originals = {_wrapped(wrapped, f): f for f in step.futures}
                done, pending = await asyncio.wait(
                    originals, timeout=max(0.0, step.timeout),
                    return_when=asyncio.ALL_COMPLETED if step.all else asyncio.FIRST_COMPLETED)
                reply = ({originals[f] for f in done}, {originals[f] for f in pending})

    # -- blocking calls ---------------------------------------------------------------------------
    def call(self, app: Application, op: Op, payload: bytes, node_id: str, timeout: float) -> Response:
        """One request, blocking; its decoded response, or CallFailed."""
        try:
            raw = app.request(payload, node_id, timeout)
        except FAILURES as exc:
            raise self.failure(exc, node_id) from exc
        return self.response(op, node_id, raw)

    def deliver(self, app: Application, node_id: str, records: list[Record], timeout: float
                ) -> tuple[int, CallFailed | str | None]:
        """Send ``records`` to ``node_id`` in bounded APPLY batches, one after the other.

        Returns how many were acknowledged, and why it stopped early (None if it did not):
        the CallFailed, or the message of the error response."""
        delivered = 0
        for batch in batches(records):
            try:
                response = self.call(app, Op.APPLY, encode_request(ApplyRequest(batch)), node_id, timeout)
            except CallFailed as failed:
                return delivered, failed
            if isinstance(response, ErrorResponse):
                return delivered, response.message
            delivered += len(batch)
        return delivered, None


def _wrapped(wrapped: dict[concurrent.futures.Future[bytes], asyncio.Future[bytes]],
             fut: concurrent.futures.Future[bytes]) -> asyncio.Future[bytes]:
    """The asyncio future following ``fut`` (one per future and operation)."""
    found = wrapped.get(fut)
    if found is None:
        found = wrapped[fut] = asyncio.wrap_future(fut)
        # Its outcome is read from ``fut`` itself (Remote.result): mark it retrieved, or asyncio
        # logs "exception was never retrieved" when the wrapper is collected.
        found.add_done_callback(_retrieve)
    return found


def _retrieve(fut: asyncio.Future[bytes]) -> None:
    if not fut.cancelled():
        fut.exception()


def _wait(step: Wait) -> tuple[set[concurrent.futures.Future[bytes]], set[concurrent.futures.Future[bytes]]]:
    if not step.futures:
        return set(), set()
    done, pending = concurrent.futures.wait(
        step.futures, timeout=max(0.0, step.timeout),
        return_when=concurrent.futures.ALL_COMPLETED if step.all else concurrent.futures.FIRST_COMPLETED)
    return done, pending


def batches(records: list[Record], max_records: int = BATCH_RECORDS, max_bytes: int = BATCH_BYTES
            ) -> Iterator[list[Record]]:
    """``records`` in consecutive batches of at most ``max_records`` and about ``max_bytes``
    (a record larger than that travels alone)."""
    batch: list[Record] = []
    size = 0
    for record in records:
        cost = 64 + len(record.key) + len(record.data or b"")
        if batch and (len(batch) >= max_records or size + cost > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += cost
    if batch:
        yield batch

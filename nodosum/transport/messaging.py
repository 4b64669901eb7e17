"""Messaging: requests, responses and one-way messages between applications over QUIC.

The message layer of the transport (loop thread only; blocking callers reach it
through :class:`nodosum.bridge.LoopThread`). It is the QuicEndpoint's connection
handler: it turns what callers queue into frames on streams, and frames that arrive
into responses for waiting callers and calls of the applications' handlers (on the
worker pool, unless a request handler is inline). Which connection carries what is
decided by the peer table (:mod:`.peers`, run by :mod:`.connections`); the pure parts
are :mod:`.pending` (correlation ids), :mod:`.streams` (decoding) and :mod:`.frames`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

from ..bridge import LoopThread, resolve
from ..errors import BackpressureError, FrameError, NodeUnreachable, RemoteError, RequestTimeout
from ..metrics import Counters
from ..workers import SerialQueue
from .connections import Connections
from .frames import (
    Data,
    RequestFrame,
    encode_data,
    encode_error_response_frame,
    encode_response_frame,
    encode_stream_init,
)
from .peers import Address, PeerTable
from .pending import PendingRequests
from .quic import ERR_FRAME, ERR_PEER_REJECTED, PeerConnection
from .registry import OutboundStream, StreamKey, StreamRegistry
from .streams import ImpersonationError, InboundStreams, StreamState

logger = logging.getLogger(__name__)

ReceiveHandler = Callable[[bytes, str], None]
RequestHandler = Callable[[bytes, str], bytes]


class HandlerSource(Protocol):
    """Where the transport finds an application's handlers (the Node)."""

    def receive_handler(self, app_id: str, stream_name: str) -> ReceiveHandler | None: ...

    def request_handler(self, app_id: str) -> tuple[RequestHandler, bool] | None:
        """The handler and whether it runs inline on the loop thread."""

    def has_application(self, app_id: str) -> bool: ...


def call_request_handler(handler: RequestHandler, payload: bytes, sender: str,
                         counters: Counters) -> tuple[bytes | None, str | None]:
    """Run a request handler: (response, None), or (None, the error message for the caller)."""
    try:
        result = handler(payload, sender)
        if not isinstance(result, (bytes, bytearray, memoryview)):
            raise TypeError(f"request handler returned {type(result).__name__}, not bytes")
        return bytes(result), None
    except Exception as exc:
        counters.inc("handler_errors")
        logger.info("request handler raised for a request from %s: %r", sender, exc)
        return None, f"{type(exc).__name__}: {exc}"


class Messaging:
    """Streams, requests and their responses, one-way messages (see the module docstring)."""

    def __init__(self, node_id: str, loop_thread: LoopThread, handlers: HandlerSource, counters: Counters, *,
                 max_frame_size: int, max_pending_requests: int, max_queued_bytes: int, connect_timeout: float,
                 reconnect_min: float, reconnect_max: float, idle_timeout: float, max_open: int) -> None:
        self.node_id = node_id
        self.loop_thread = loop_thread
        self.handlers = handlers
        self.counters = counters
        self.max_frame_size = max_frame_size
        self.max_pending_requests = max_pending_requests
        self.max_queued_bytes = max_queued_bytes
        self.registry = StreamRegistry()
        self.pending = PendingRequests()
        table = PeerTable(node_id, rng=random.Random(), idle_timeout=idle_timeout, max_open=max_open,
                          reconnect_min=reconnect_min, reconnect_max=reconnect_max,
                          max_waiters=max_pending_requests)
        self.connections = Connections(table, loop_thread, connect_timeout=connect_timeout, quiet=self._quiet,
                                       retire=self.registry.close_connection)
        # Work that wakes another thread (a blocked caller, a handler) waits until this tick's
        # packets are sent: the woken thread then finds the loop about to idle instead of
        # competing with it for the GIL while it transmits.
        self.after_transmit: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._expiry: Any = None  # the loop timer of the earliest request deadline
        self._expiry_at: float | None = None
        # hot counters, touched on the loop thread only (Node.stats reads them there)
        self.requests_sent = self.requests_received = self.bytes_sent = self.bytes_received = 0

    @property
    def loop(self) -> Any:
        return self.loop_thread.loop

    def stats(self) -> dict[str, int]:
        """Counters of this layer and of the peer table (on the loop thread)."""
        return {"requests_sent": self.requests_sent, "requests_received": self.requests_received,
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "requests_in_flight": len(self.pending),
                "connections_open": self.connections.table.open_connections, **self.connections.table.counters}

    # -- the QuicEndpoint's connection handler ----------------------------------------------
    def transmitted(self) -> None:
        """Called by the endpoint after each coalesced transmit."""
        work, self.after_transmit = self.after_transmit, []
        for fn, args in work:
            fn(*args)

    def connection_verified(self, conn: PeerConnection) -> None:
        assert conn.node_id is not None
        conn.user = InboundStreams(conn.node_id, conn.dialled, self.max_frame_size)
        self.connections.verified(conn)

    def connection_closed(self, conn: PeerConnection, reason: str) -> None:
        self.registry.close_connection(conn)
        lost = self.pending.lost(conn)
        if lost:
            self.counters.inc("requests_unanswered", len(lost))
            error = NodeUnreachable(f"connection to {conn.node_id or conn.expected_node_id!r} lost: {reason}")
            for result in lost:
                resolve(result, error=error)
        if isinstance(conn.user, InboundStreams):
            conn.user.streams.clear()
        self.connections.closed(conn, reason)

    def stream_data(self, conn: PeerConnection, stream_id: int, data: bytes, end_stream: bool) -> None:
        streams: InboundStreams = conn.user
        self.bytes_received += len(data)
        try:
            got = streams.receive(stream_id, data, end_stream)
        except FrameError as exc:
            self._bad_stream(conn, streams, stream_id, exc)
            return
        if got is None:
            return  # a stream already dropped
        state, frames = got
        if state.outbound is not None:
            self._responses(conn, frames)
        elif frames:
            self.connections.used(streams.peer_id)
            for frame in frames:
                if frame.__class__ is RequestFrame:
                    self._dispatch_request(conn, streams, stream_id, state.app_id, frame)
                elif frame.__class__ is Data:
                    self._dispatch_data(state, streams.peer_id, frame.payload)
        if end_stream:
            self._drop_stream(streams, stream_id)

    def stream_reset(self, conn: PeerConnection, stream_id: int, error_code: int) -> None:
        streams: InboundStreams = conn.user
        if stream_id in streams.streams:
            self.counters.inc("streams_reset_by_peer")
            self._drop_stream(streams, stream_id, aborted=True)

    def _bad_stream(self, conn: PeerConnection, streams: InboundStreams, stream_id: int, exc: FrameError) -> None:
        self.counters.inc("frames_bad")
        logger.warning("bad frame from %s on stream %d, closing the stream: %s", conn.node_id, stream_id, exc)
        self._drop_stream(streams, stream_id, aborted=True)
        conn.abort_stream(stream_id, ERR_FRAME)
        if isinstance(exc, ImpersonationError):
            self.counters.inc("peers_rejected")
            conn.close(ERR_PEER_REJECTED, "claimed node id does not match certificate")

    def _drop_stream(self, streams: InboundStreams, stream_id: int, aborted: bool = False) -> None:
        state = streams.drop(stream_id, aborted)
        if state is not None and state.outbound is not None:
            self.registry.close(state.outbound)

    def _quiet(self, conn: PeerConnection) -> bool:
        """Nothing in flight on ``conn`` in either direction."""
        return self.pending.in_flight(conn) == 0 and not (isinstance(conn.user, InboundStreams) and conn.user.handling)

    # -- responses ---------------------------------------------------------------------------------
    def _responses(self, conn: PeerConnection, frames: list[Any]) -> None:
        answer, wake = self.pending.answer, self.after_transmit.append
        for frame in frames:
            result = answer(frame.correlation_id, conn)
            if result is None:
                self.counters.inc("responses_unmatched")
            elif frame.error is None:
                wake((resolve, (result, frame.payload)))
            else:
                self.counters.inc("request_errors")
                wake((resolve, (result, None, RemoteError(frame.error, conn.node_id))))

    # -- inbound requests and messages -----------------------------------------------------------------
    def _dispatch_request(self, conn: PeerConnection, streams: InboundStreams, stream_id: int, app_id: str,
                          frame: RequestFrame) -> None:
        self.requests_received += 1
        found = self.handlers.request_handler(app_id)
        if found is None:
            if self.handlers.has_application(app_id):
                message = f"application {app_id!r} on node {self.node_id!r} has no request handler"
            else:
                message = f"no application {app_id!r} on node {self.node_id!r}"
            self._send(conn, stream_id, encode_error_response_frame(frame.correlation_id, message))
            return
        handler, inline = found
        if inline:
            self._send(conn, stream_id, self.respond(handler, frame.payload, streams.peer_id, frame.correlation_id))
            return
        streams.handling += 1
        self.after_transmit.append((self.loop_thread.run_in_worker,
                                    (self._run_request, handler, frame.payload, conn, stream_id,
                                     frame.correlation_id)))

    def _run_request(self, handler: RequestHandler, payload: bytes, conn: PeerConnection, stream_id: int,
                     correlation_id: int) -> None:
        """Worker thread: run a request handler and send back its response."""
        frame = self.respond(handler, payload, conn.user.peer_id, correlation_id)
        self.loop_thread.post_if_running(self._send_response, conn, stream_id, frame)

    def respond(self, handler: RequestHandler, payload: bytes, sender: str, correlation_id: int) -> bytes:
        """Run a request handler; returns the encoded RESPONSE frame (ok or error)."""
        response, error = call_request_handler(handler, payload, sender, self.counters)
        if response is not None:
            try:
                return encode_response_frame(correlation_id, response, max_frame_size=self.max_frame_size)
            except FrameError as exc:
                self.counters.inc("responses_too_large")
                error = f"response too large: {exc}"
        assert error is not None
        return encode_error_response_frame(correlation_id, error)

    def _send_response(self, conn: PeerConnection, stream_id: int, frame: bytes) -> None:
        conn.user.handling -= 1
        if conn.closed or stream_id not in conn.user.streams:
            self.counters.inc("responses_dropped")
            return
        self._send(conn, stream_id, frame)

    def _dispatch_data(self, state: StreamState, sender: str, payload: bytes) -> None:
        handler = self.handlers.receive_handler(state.app_id, state.name)
        if handler is None:
            self.counters.inc("messages_unhandled")
            logger.debug("no receive handler for %s/%s; message from %s dropped", state.app_id, state.name, sender)
            return
        if state.delivery is None:
            state.delivery = SerialQueue(self.loop_thread.run_in_worker, self.max_pending_requests, self.counters)
        state.delivery.put(handler, payload, sender)

    # -- outbound ---------------------------------------------------------------------------------------
    def _send(self, conn: PeerConnection, stream_id: int, frame: bytes) -> None:
        self.bytes_sent += len(frame)
        conn.send(stream_id, frame)

    def outbound_stream(self, conn: PeerConnection, app_id: str, name: str) -> OutboundStream:
        assert conn.node_id is not None
        key: StreamKey = (conn.node_id, app_id, name)
        stream = self.registry.get(key)
        if stream is not None:
            if stream.conn is conn:
                return stream
            self.registry.close(stream)  # it rides another (retired) connection: open a fresh one here

        def create() -> OutboundStream:
            return OutboundStream(key, conn, conn.new_stream())

        stream, created = self.registry.get_or_create(key, create)
        if created:
            conn.user.opened(stream.stream_id, stream)
            self._send(conn, stream.stream_id, encode_stream_init(self.node_id, app_id, name))
        return stream

    def start_request(self, result: Any, node_id: str, app_id: str, name: str, correlation_id: int, frame: bytes,
                      timeout: float | None = None, address: Address | None = None) -> None:
        """Send a REQUEST; ``result`` (a Future or a Waiter) gets the response. With ``timeout``
        it fails with RequestTimeout by then (blocking callers time out on their own side).
        ``address``: where to dial a node that is not (yet) a member (membership's own traffic)."""
        deadline = None if timeout is None else self.loop.time() + timeout
        conn = self.connections.get(node_id, address)
        if conn is not None:
            self._send_request(conn, result, app_id, name, correlation_id, frame, deadline)
            return

        def send(conn: PeerConnection) -> None:
            self._send_request(conn, result, app_id, name, correlation_id, frame, deadline)

        self.connections.wait(node_id, send, result, timeout, address)

    def _send_request(self, conn: PeerConnection, result: Any, app_id: str, name: str, correlation_id: int,
                      frame: bytes, deadline: float | None) -> None:
        if result.done():
            return
        if len(self.pending) >= self.max_pending_requests:
            self.counters.inc("backpressure_refusals")
            resolve(result, error=BackpressureError(f"{len(self.pending)} requests in flight (max_pending_requests)"))
            return
        stream_id = self.outbound_stream(conn, app_id, name).stream_id
        if conn.backlog(stream_id) > self.max_queued_bytes:
            resolve(result, error=self._backpressure(conn))
            return
        self.pending.add(correlation_id, result, conn, deadline)
        if deadline is not None and (self._expiry_at is None or deadline < self._expiry_at):
            self._arm_expiry(deadline)
        self.requests_sent += 1
        self._send(conn, stream_id, frame)

    def _arm_expiry(self, deadline: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = deadline
        self._expiry = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = self._expiry_at = None
        for result, conn in self.pending.expire(self.loop.time()):
            self._timed_out(result, conn)
        deadline = self.pending.next_deadline()
        if deadline is not None:
            self._arm_expiry(deadline)

    def _timed_out(self, result: Any, conn: PeerConnection) -> None:
        self.counters.inc("request_timeouts")
        resolve(result, error=RequestTimeout(f"no response from {conn.node_id!r} within the request timeout"))
        assert conn.node_id is not None
        self.connections.stalled(conn.node_id)

    def cancel_request(self, correlation_id: int) -> None:
        """The caller gave up waiting (it raised RequestTimeout itself)."""
        entry = self.pending.cancel(correlation_id)
        self.counters.inc("request_timeouts")
        if entry is not None and entry[1].node_id is not None:
            self.connections.stalled(entry[1].node_id)

    def start_send(self, result: concurrent.futures.Future[None], node_ids: list[str], app_id: str, name: str,
                   payload: bytes) -> None:
        """Send a DATA message to each node; ``result`` fails at once for non-members and for
        peers whose send queue is full; a message waiting for a connection that fails is
        counted (``messages_undelivered``), as for any one-way message."""
        frame = encode_data(payload, max_frame_size=self.max_frame_size)
        unknown = [n for n in node_ids if not self.connections.table.is_member(n)]
        if unknown:
            resolve(result, error=NodeUnreachable(f"not members of this cluster: {', '.join(map(repr, unknown))}"))
            return
        refused: list[str] = []

        def send(conn: PeerConnection) -> bool:
            stream_id = self.outbound_stream(conn, app_id, name).stream_id
            if conn.backlog(stream_id) > self.max_queued_bytes:
                return False
            self._send(conn, stream_id, frame)
            return True

        for node_id in node_ids:
            conn = self.connections.get(node_id)
            if conn is not None:
                if not send(conn):
                    refused.append(node_id)
                continue
            later: concurrent.futures.Future[None] = concurrent.futures.Future()
            later.add_done_callback(self._count_lost_send)

            def send_later(conn: PeerConnection, later: concurrent.futures.Future[None] = later) -> None:
                if send(conn):
                    resolve(later, None)
                else:
                    resolve(later, error=self._backpressure(conn))

            self.connections.wait(node_id, send_later, later)
        if refused:
            resolve(result, error=BackpressureError(
                f"send queue to {', '.join(map(repr, refused))} is over max_queued_bytes "
                f"({self.max_queued_bytes}): the peer is not keeping up"))
        else:
            resolve(result, None)

    def _backpressure(self, conn: PeerConnection) -> BackpressureError:
        self.counters.inc("backpressure_refusals")
        return BackpressureError(f"send queue to {conn.node_id!r} is over max_queued_bytes "
                                 f"({self.max_queued_bytes}): the peer is not keeping up")

    def _count_lost_send(self, fut: concurrent.futures.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.counters.inc("messages_undelivered")
            logger.info("one-way message not delivered: %s", fut.exception())

    def open_stream(self, result: concurrent.futures.Future[None], node_id: str, app_id: str, name: str) -> None:
        def open_(conn: PeerConnection) -> None:
            self.outbound_stream(conn, app_id, name)
            resolve(result, None)

        conn = self.connections.get(node_id)
        if conn is not None:
            open_(conn)
        else:
            self.connections.wait(node_id, open_, result)

    def close(self) -> None:
        """Stop dialling and fail everything still waiting (before the endpoint closes)."""
        self.transmitted()  # responses that already arrived are delivered, not failed
        self.connections.close()
        if self._expiry is not None:
            self._expiry.cancel()
        error = NodeUnreachable("node is shutting down")
        for result in self.pending.clear():
            resolve(result, error=error)

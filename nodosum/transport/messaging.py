"""Messages between applications over the QUIC endpoint (loop thread only).

This layer keeps one connection per peer, opens streams, matches responses to
requests by correlation id, and hands inbound messages to user handlers on the
worker pool. Every method here runs on the loop thread; blocking callers reach
it through :class:`nodosum.bridge.LoopThread`.

One connection per peer pair: both sides may dial (the one with the larger id
waits a moment first, so usually only one does). When two verified connections
meet, both sides keep the one dialled by the smaller node id and retire the
other once its in-flight requests are done.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..bridge import LoopThread
from ..errors import BackpressureError, FrameError, NodeUnreachable, RemoteError, RequestTimeout
from ..membership import Member, MemberEvent, MemberEventKind
from ..metrics import Counters
from .frames import (
    Data,
    FrameDecoder,
    Request,
    Response,
    StreamInit,
    encode_data,
    encode_error_response,
    encode_response,
    encode_stream_init,
)
from .quic import (
    ERR_DUPLICATE,
    ERR_FRAME,
    ERR_MEMBER_GONE,
    ERR_PEER_REJECTED,
    ERR_UNRESPONSIVE,
    PeerConnection,
    QuicEndpoint,
)
from .registry import OutboundStream, StreamKey, StreamRegistry

logger = logging.getLogger(__name__)

RETIRE_GRACE = 10.0  # seconds a losing duplicate connection stays open for in-flight work

ReceiveHandler = Callable[[bytes, str], None]
RequestHandler = Callable[[bytes, str], bytes]


class HandlerSource(Protocol):
    """Where the transport finds an application's handlers (the Node)."""

    def receive_handler(self, app_id: str, stream_name: str) -> ReceiveHandler | None: ...

    def request_handler(self, app_id: str) -> tuple[RequestHandler, bool] | None:
        """The handler and whether it runs inline on the loop thread."""

    def has_application(self, app_id: str) -> bool: ...


def resolve(fut: Any, value: Any = None, error: BaseException | None = None) -> None:
    """Complete ``fut`` (a concurrent Future or a Waiter) unless its caller gave up on it."""
    if fut.done():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its timed-out caller in the meantime


class InboundDelivery:
    """Ordered delivery of one stream's DATA messages on the worker pool."""

    __slots__ = ("lock", "queue", "draining")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: deque[tuple[Callable[[Any, str], None], Any]] = deque()
        self.draining = False


class StreamState:
    """Read side of one stream: its decoder and what it carries."""

    __slots__ = ("decoder", "outbound", "app_id", "name", "delivery")

    def __init__(self, decoder: FrameDecoder, outbound: OutboundStream | None) -> None:
        self.decoder = decoder
        self.outbound = outbound
        self.app_id = ""
        self.name = ""
        self.delivery: InboundDelivery | None = None


MAX_ABORTED_REMEMBERED = 1024


class ConnState:
    """What this layer keeps per connection."""

    __slots__ = ("streams", "aborted")

    def __init__(self) -> None:
        self.streams: dict[int, StreamState] = {}
        # streams we aborted: data still in flight on them is ignored, not decoded afresh
        self.aborted: dict[int, None] = {}

    def remember_aborted(self, stream_id: int) -> None:
        self.aborted[stream_id] = None
        if len(self.aborted) > MAX_ABORTED_REMEMBERED:
            del self.aborted[next(iter(self.aborted))]


class PeerState:
    """One peer: its member record, its connection, and callers waiting for one."""

    __slots__ = ("node_id", "member", "address", "conn", "dialling", "waiters", "failures", "failed_reason",
                 "redial_handle", "retiring", "candidate", "probing")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.member: Member | None = None
        self.address: tuple[str, int] | None = None  # where to dial, member or not
        self.conn: PeerConnection | None = None
        self.dialling: PeerConnection | None = None
        self.waiters: list[tuple[Callable[[PeerConnection], None], concurrent.futures.Future[Any]]] = []
        self.failures = 0
        self.failed_reason: str | None = None
        self.redial_handle: Any = None
        self.retiring: list[PeerConnection] = []
        # a newer connection kept aside while ``conn`` is probed (see Messaging._probe_current)
        self.candidate: PeerConnection | None = None
        self.probing = False


class Messaging:
    """Connections per peer, streams, requests and their responses."""

    def __init__(self, node_id: str, loop_thread: LoopThread, handlers: HandlerSource, counters: Counters, *,
                 max_frame_size: int, max_pending_requests: int, max_queued_bytes: int,
                 reconnect_min: float, reconnect_max: float, on_connected: Callable[[str], None] | None = None) -> None:
        self.node_id = node_id
        self.loop_thread = loop_thread
        self.handlers = handlers
        self.counters = counters
        self.max_frame_size = max_frame_size
        self.max_pending_requests = max_pending_requests
        self.max_queued_bytes = max_queued_bytes
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.on_connected = on_connected
        self.endpoint: QuicEndpoint | None = None
        self.registry = StreamRegistry()
        self.peers: dict[str, PeerState] = {}
        # correlation id -> (future, connection, expiry timer or None)
        self.pending: dict[int, tuple[concurrent.futures.Future[bytes], PeerConnection, Any]] = {}
        self.correlation_ids = itertools.count(1)  # shared by every application of the node
        # Work that wakes another thread (a blocked caller, a handler) waits until this tick's
        # packets are sent: the woken thread then finds the loop about to idle instead of
        # competing with it for the GIL while it transmits.
        self.after_transmit: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._address_dials: dict[PeerConnection, concurrent.futures.Future[str]] = {}
        self._closing = False

    @property
    def loop(self) -> Any:
        return self.loop_thread.loop

    # -- membership ---------------------------------------------------------------
    def member_event(self, event: MemberEvent) -> None:
        member = event.member
        if member.node_id == self.node_id:
            return
        peer = self._peer(member.node_id)
        if event.kind in (MemberEventKind.JOIN, MemberEventKind.UPDATE):
            peer.member = member
            peer.address = member.address
            if peer.conn is None and peer.dialling is None and peer.redial_handle is None:
                # the smaller id dials at once; the larger waits a moment so that
                # usually only one connection is made
                delay = 0.0 if self.node_id < member.node_id else self.reconnect_min * (1 + random.random())
                peer.redial_handle = self.loop.call_later(delay, self._dial, peer)
        else:
            peer.member = None
            self._cancel_redial(peer)
            self._fail_waiters(peer, f"node {member.node_id!r} {event.kind.value}")
            for conn in (peer.conn, peer.dialling, peer.candidate, *peer.retiring):
                if conn is not None:
                    conn.close(ERR_MEMBER_GONE, f"member {event.kind.value}")
            if peer.conn is None and peer.dialling is None and peer.candidate is None and not peer.retiring:
                del self.peers[member.node_id]  # nothing left of it: forget it (churn must not grow this map)

    def _peer(self, node_id: str) -> PeerState:
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self.peers[node_id] = PeerState(node_id)
        return peer

    def is_connected(self, node_id: str) -> bool:
        peer = self.peers.get(node_id)
        return peer is not None and peer.conn is not None

    # -- dialling --------------------------------------------------------------------
    def _dial(self, peer: PeerState) -> None:
        peer.redial_handle = None
        if self._closing or peer.address is None or peer.conn is not None or peer.dialling is not None:
            return
        assert self.endpoint is not None
        peer.dialling = self.endpoint.dial(peer.address, peer.node_id)

    def _schedule_redial(self, peer: PeerState) -> None:
        if self._closing or peer.member is None or peer.redial_handle is not None:
            return
        delay = min(self.reconnect_max, self.reconnect_min * (2 ** min(peer.failures, 16)))
        delay *= 0.5 + random.random()
        peer.redial_handle = self.loop.call_later(delay, self._dial, peer)

    @staticmethod
    def _cancel_redial(peer: PeerState) -> None:
        if peer.redial_handle is not None:
            peer.redial_handle.cancel()
            peer.redial_handle = None

    def with_connection(self, node_id: str, fut: Any, action: Callable[[PeerConnection], None],
                        address: tuple[str, int] | None = None) -> None:
        """Run ``action(conn)`` now or once the peer is connected; fail ``fut`` if it cannot be.

        Only members are reachable, unless ``address`` is given (membership's own traffic)."""
        peer = self.peers.get(node_id)
        if address is not None:
            peer = self._peer(node_id)
            if peer.member is None:
                peer.address = address
        elif peer is None or peer.member is None:
            resolve(fut, error=NodeUnreachable(f"node {node_id!r} is not a member of this cluster"))
            return
        conn = peer.conn
        if conn is not None:
            action(conn)
            return
        if peer.address is None:
            resolve(fut, error=NodeUnreachable(f"no address known for node {node_id!r}"))
            return
        if peer.failed_reason is not None and peer.dialling is None and address is None:
            resolve(fut, error=NodeUnreachable(f"node {node_id!r} is unreachable: {peer.failed_reason}"))
            if peer.redial_handle is None:
                self._schedule_redial(peer)
            return
        if len(peer.waiters) >= self.max_pending_requests:
            self.counters.inc("backpressure_refusals")
            resolve(fut, error=NodeUnreachable(f"too many operations waiting for a connection to {node_id!r}"))
            return
        peer.waiters.append((action, fut))
        if peer.dialling is None:
            self._cancel_redial(peer)
            self._dial(peer)

    def _fail_waiters(self, peer: PeerState, reason: str) -> None:
        waiters, peer.waiters = peer.waiters, []
        for _, fut in waiters:
            resolve(fut, error=NodeUnreachable(reason))

    # -- connection events (QuicEndpoint's handler) --------------------------------------
    def transmitted(self) -> None:
        """Called by the endpoint after each coalesced transmit."""
        work, self.after_transmit = self.after_transmit, []
        for fn, args in work:
            fn(*args)

    def connection_verified(self, conn: PeerConnection) -> None:
        conn.user = ConnState()
        assert conn.node_id is not None
        peer = self._peer(conn.node_id)
        seed = self._address_dials.pop(conn, None)
        if seed is not None:
            if peer.address is None:
                peer.address = conn.address
            resolve(seed, conn.node_id)
        if peer.dialling is conn:
            peer.dialling = None
        current = peer.conn
        if current is not None and not current.closed:
            if conn.dialled != (self.node_id < conn.node_id):  # the rule keeps the current connection
                self._probe_current(peer, current, conn)
                return
            self._retire(peer, current)
        self._adopt(peer, conn)

    def _adopt(self, peer: PeerState, conn: PeerConnection) -> None:
        """Make ``conn`` the peer's connection and run what waited for one."""
        peer.conn = conn
        peer.failures = 0
        peer.failed_reason = None
        self._cancel_redial(peer)
        waiters, peer.waiters = peer.waiters, []
        for action, fut in waiters:
            if not fut.done():
                action(conn)
        if self.on_connected is not None:
            self.on_connected(peer.node_id)

    def _probe_current(self, peer: PeerState, current: PeerConnection, candidate: PeerConnection) -> None:
        """A second connection arrived that the duplicate rule would retire.

        Usually it is the other half of a simultaneous dial. But if the peer restarted, the
        current connection leads to a process that is gone: its packets are dropped and nothing
        closes it before the idle timeout, so every request on it would time out. Keep the new
        connection aside until the current one answers a PING; if it does not, switch over.
        """
        if peer.candidate is not None:
            self._retire(peer, peer.candidate)
        peer.candidate = candidate
        if not peer.probing:
            peer.probing = True
            current.probe(lambda answered: self._current_probed(peer, current, answered))

    def _current_probed(self, peer: PeerState, current: PeerConnection, answered: bool) -> None:
        peer.probing = False
        candidate, peer.candidate = peer.candidate, None
        if candidate is None or candidate.closed:
            return
        if answered and peer.conn is current and not current.closed:
            self._retire(peer, candidate)  # a duplicate after all
            return
        if peer.conn is current:
            self.counters.inc("connections_unresponsive")
            logger.info("connection to %s does not answer while a new one arrived (a restart?); switching",
                        peer.node_id)
            peer.conn = None
            current.close(ERR_UNRESPONSIVE, "unresponsive; replaced by a newer connection")
        if peer.conn is None:
            self._adopt(peer, candidate)
        else:
            self._retire(peer, candidate)

    def _retire(self, peer: PeerState, conn: PeerConnection) -> None:
        self.counters.inc("connections_duplicate")
        logger.debug("retiring duplicate connection %r", conn)
        self.registry.close_connection(conn)
        peer.retiring.append(conn)
        self.loop.call_later(RETIRE_GRACE, self._close_retired, peer, conn)

    def _close_retired(self, peer: PeerState, conn: PeerConnection) -> None:
        if conn.closed:
            return
        if any(c is conn for _, c, _ in self.pending.values()):
            self.loop.call_later(RETIRE_GRACE, self._close_retired, peer, conn)
            return
        conn.close(ERR_DUPLICATE, "duplicate connection")

    def connection_closed(self, conn: PeerConnection, reason: str) -> None:
        seed = self._address_dials.pop(conn, None)
        if seed is not None:
            resolve(seed, error=NodeUnreachable(f"cannot connect to {conn.address[0]}:{conn.address[1]}: {reason}"))
        self.registry.close_connection(conn)
        lost = [cid for cid, (_, c, _) in self.pending.items() if c is conn]
        who = conn.node_id or conn.expected_node_id
        for cid in lost:
            fut, _, timer = self.pending.pop(cid)
            if timer is not None:
                timer.cancel()
            resolve(fut, error=NodeUnreachable(f"connection to {who!r} lost: {reason}"))
        if isinstance(conn.user, ConnState):
            conn.user.streams.clear()
        node_id = conn.node_id or conn.expected_node_id
        peer = self.peers.get(node_id) if node_id else None
        if peer is None:
            return
        if conn in peer.retiring:
            peer.retiring.remove(conn)
        if peer.candidate is conn:
            peer.candidate = None
        if peer.dialling is conn:
            peer.dialling = None
            peer.failures += 1
            peer.failed_reason = reason if reason else "connection failed"
            self._fail_waiters(peer, f"cannot connect to {node_id!r}: {peer.failed_reason}")
            self._schedule_redial(peer)
        elif peer.conn is conn:
            peer.conn = None
            if peer.candidate is not None:  # the connection that was waiting to replace it
                candidate, peer.candidate = peer.candidate, None
                self._adopt(peer, candidate)
                return
            peer.failures += 1
            peer.failed_reason = reason
            self._schedule_redial(peer)

    # -- streams ---------------------------------------------------------------------------
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
            conn.user.streams[stream.stream_id] = StreamState(
                FrameDecoder(self.max_frame_size, expect_init=False), stream
            )
            conn.send(stream.stream_id, encode_stream_init(self.node_id, app_id, name))
        return stream

    def stream_data(self, conn: PeerConnection, stream_id: int, data: bytes, end_stream: bool) -> None:
        state: StreamState | None = conn.user.streams.get(stream_id)
        if state is None:
            if (stream_id & 1) == (0 if conn.dialled else 1) or stream_id in conn.user.aborted:
                return  # a stream already dropped
            state = conn.user.streams[stream_id] = StreamState(FrameDecoder(self.max_frame_size), None)
        try:
            frames = state.decoder.feed(data) if data else []
            for frame in frames:
                self._handle_frame(conn, stream_id, state, frame)
            if end_stream and state.decoder.buffered:
                raise FrameError(f"stream ended inside a frame ({state.decoder.buffered} bytes left over)")
        except FrameError as exc:
            self.counters.inc("frames_bad")
            logger.warning("bad frame from %s on stream %d, closing the stream: %s", conn.node_id, stream_id, exc)
            self._drop_stream(conn, stream_id, state, ERR_FRAME)
            return
        if end_stream:
            self._drop_stream(conn, stream_id, state, None)

    def _drop_stream(self, conn: PeerConnection, stream_id: int, state: StreamState, error_code: int | None) -> None:
        conn.user.streams.pop(stream_id, None)
        if state.outbound is not None:
            self.registry.close(state.outbound)
        if error_code is not None:
            conn.user.remember_aborted(stream_id)
            conn.abort_stream(stream_id, error_code)

    def stream_reset(self, conn: PeerConnection, stream_id: int, error_code: int) -> None:
        state = conn.user.streams.get(stream_id)
        if state is not None:
            self.counters.inc("streams_reset_by_peer")
            self._drop_stream(conn, stream_id, state, None)
            conn.user.remember_aborted(stream_id)

    def _handle_frame(self, conn: PeerConnection, stream_id: int, state: StreamState, frame: Any) -> None:
        frame_type = type(frame)
        if state.outbound is not None:
            if frame_type is not Response:
                raise FrameError(f"unexpected {frame_type.__name__} frame on a stream we opened")
            entry = self.pending.pop(frame.correlation_id, None)
            if entry is None or entry[1] is not conn:
                if entry is not None:  # not this peer's request: put it back
                    self.pending[frame.correlation_id] = entry
                self.counters.inc("responses_unmatched")
                return
            if entry[2] is not None:
                entry[2].cancel()
            if frame.error is None:
                self.after_transmit.append((resolve, (entry[0], frame.payload)))
            else:
                self.after_transmit.append((resolve, (entry[0], None, RemoteError(frame.error, conn.node_id))))
            return
        if frame_type is Request:
            self._dispatch_request(conn, stream_id, state.app_id, frame)
        elif frame_type is Data:
            self._dispatch_data(conn, state, frame.payload)
        elif frame_type is StreamInit:
            if frame.node_id != conn.node_id:
                self.counters.inc("peers_rejected")
                logger.warning("peer with certificate for %r claims to be %r; closing its connection",
                               conn.node_id, frame.node_id)
                conn.close(ERR_PEER_REJECTED, "claimed node id does not match certificate")
                raise FrameError("claimed node id does not match the certificate")
            state.app_id = frame.app_id
            state.name = frame.stream_name
        else:
            raise FrameError(f"unexpected {frame_type.__name__} frame on a peer's stream")

    # -- inbound dispatch ------------------------------------------------------------------------
    def _dispatch_request(self, conn: PeerConnection, stream_id: int, app_id: str, frame: Request) -> None:
        found = self.handlers.request_handler(app_id)
        if found is None:
            if self.handlers.has_application(app_id):
                message = f"application {app_id!r} on node {self.node_id!r} has no request handler"
            else:
                message = f"no application {app_id!r} on node {self.node_id!r}"
            conn.send(stream_id, encode_error_response(frame.correlation_id, message))
            return
        handler, inline = found
        if inline:
            assert conn.node_id is not None
            conn.send(stream_id, self.run_handler(handler, frame.payload, conn.node_id, frame.correlation_id))
            return
        self.after_transmit.append((self.loop_thread.run_in_worker,
                                    (self._run_request, handler, frame.payload, conn, stream_id,
                                     frame.correlation_id)))

    def _run_request(self, handler: RequestHandler, payload: bytes, conn: PeerConnection, stream_id: int,
                     correlation_id: int) -> None:
        """Worker thread: run a request handler and send back its response."""
        assert conn.node_id is not None
        frame = self.run_handler(handler, payload, conn.node_id, correlation_id)
        self.loop_thread.call_soon(self._send_response, conn, stream_id, frame)

    def run_handler(self, handler: RequestHandler, payload: bytes, sender: str, correlation_id: int) -> bytes:
        """Run a request handler; returns the encoded RESPONSE frame (ok or error)."""
        try:
            result = handler(payload, sender)
            if not isinstance(result, (bytes, bytearray, memoryview)):
                raise TypeError(f"request handler returned {type(result).__name__}, not bytes")
            return encode_response(correlation_id, bytes(result), max_frame_size=self.max_frame_size)
        except FrameError as exc:
            self.counters.inc("responses_too_large")
            return encode_error_response(correlation_id, f"response too large: {exc}")
        except Exception as exc:
            self.counters.inc("handler_errors")
            logger.info("request handler raised for a request from %s: %r", sender, exc)
            return encode_error_response(correlation_id, f"{type(exc).__name__}: {exc}")

    def _send_response(self, conn: PeerConnection, stream_id: int, frame: bytes) -> None:
        if conn.closed or stream_id not in conn.user.streams:
            self.counters.inc("responses_dropped")
            return
        conn.send(stream_id, frame)

    def _dispatch_data(self, conn: PeerConnection, state: StreamState, payload: bytes) -> None:
        handler = self.handlers.receive_handler(state.app_id, state.name)
        if handler is None:
            self.counters.inc("messages_unhandled")
            logger.debug("no receive handler for %s/%s; message from %s dropped", state.app_id, state.name,
                         conn.node_id)
            return
        if state.delivery is None:
            state.delivery = InboundDelivery()
        assert conn.node_id is not None
        self.deliver(state.delivery, handler, payload, conn.node_id)

    def deliver(self, delivery: InboundDelivery, handler: Callable[[Any, str], None], payload: Any,
                sender: str) -> None:
        """Queue a message for ordered delivery on the worker pool."""
        with delivery.lock:
            if len(delivery.queue) >= self.max_pending_requests:
                self.counters.inc("messages_dropped_backlog")
                logger.warning("receive backlog from %s is full; message dropped", sender)
                return
            delivery.queue.append((handler, payload))
            if delivery.draining:
                return
            delivery.draining = True
        self.loop_thread.run_in_worker(self._drain, delivery, sender)

    def _drain(self, delivery: InboundDelivery, sender: str) -> None:
        while True:
            with delivery.lock:
                if not delivery.queue:
                    delivery.draining = False
                    return
                handler, payload = delivery.queue.popleft()
            try:
                handler(payload, sender)
            except Exception:
                self.counters.inc("handler_errors")
                logger.exception("receive handler raised on a message from %s", sender)

    # -- outbound operations (loop thread, from the bridge) ------------------------------------------
    def start_request(self, fut: Any, node_id: str, app_id: str, name: str, correlation_id: int, frame: bytes,
                      timeout: float | None = None, address: tuple[str, int] | None = None) -> None:
        """Send a REQUEST; ``fut`` gets the response. With ``timeout`` a loop timer
        fails it with RequestTimeout (blocking callers time out on their own side)."""
        timer = None
        if timeout is not None:
            timer = self.loop.call_later(timeout, self._expire, fut, correlation_id, node_id, timeout)

        def send(conn: PeerConnection) -> None:
            if fut.done():
                return
            if len(self.pending) >= self.max_pending_requests:
                self.counters.inc("backpressure_refusals")
                resolve(fut, error=BackpressureError(f"{len(self.pending)} requests in flight (max_pending_requests)"))
                return
            stream = self.outbound_stream(conn, app_id, name)
            if conn.backlog(stream.stream_id) > self.max_queued_bytes:
                resolve(fut, error=self._backpressure(conn))
                return
            self.pending[correlation_id] = (fut, conn, timer)
            conn.send(stream.stream_id, frame)

        self.with_connection(node_id, fut, send, address)

    def _expire(self, fut: concurrent.futures.Future[bytes], correlation_id: int, node_id: str,
                timeout: float) -> None:
        self.pending.pop(correlation_id, None)
        resolve(fut, error=RequestTimeout(f"no response from {node_id!r} within {timeout}s"))

    def cancel_request(self, correlation_id: int) -> None:
        entry = self.pending.pop(correlation_id, None)
        if entry is not None and entry[2] is not None:
            entry[2].cancel()

    def start_send(self, fut: concurrent.futures.Future[None], node_ids: list[str], app_id: str, name: str,
                   payload: bytes) -> None:
        frame = encode_data(payload, max_frame_size=self.max_frame_size)
        unknown = [n for n in node_ids if n not in self.peers or self.peers[n].member is None]
        if unknown:
            resolve(fut, error=NodeUnreachable(f"not members of this cluster: {', '.join(map(repr, unknown))}"))
            return
        refused: list[str] = []
        for node_id in node_ids:
            peer = self.peers[node_id]

            def send(conn: PeerConnection) -> bool:
                stream_id = self.outbound_stream(conn, app_id, name).stream_id
                if conn.backlog(stream_id) > self.max_queued_bytes:
                    return False
                conn.send(stream_id, frame)
                return True

            if peer.conn is not None:
                if not send(peer.conn):
                    refused.append(node_id)
            else:
                # queued until connected; a failure is counted, not raised, as for any one-way message
                waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
                waiter.add_done_callback(self._count_lost_send)

                def send_later(conn: PeerConnection, waiter: concurrent.futures.Future[None] = waiter) -> None:
                    if send(conn):
                        resolve(waiter, None)
                    else:
                        resolve(waiter, error=self._backpressure(conn))

                self.with_connection(node_id, waiter, send_later)
        if refused:
            resolve(fut, error=BackpressureError(
                f"send queue to {', '.join(map(repr, refused))} is over max_queued_bytes "
                f"({self.max_queued_bytes}): the peer is not keeping up"))
        else:
            resolve(fut, None)

    def _backpressure(self, conn: PeerConnection) -> BackpressureError:
        self.counters.inc("backpressure_refusals")
        return BackpressureError(f"send queue to {conn.node_id!r} is over max_queued_bytes "
                                 f"({self.max_queued_bytes}): the peer is not keeping up")

    def _count_lost_send(self, fut: concurrent.futures.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.counters.inc("messages_undelivered")
            logger.info("one-way message not delivered: %s", fut.exception())

    def open_stream(self, fut: concurrent.futures.Future[None], node_id: str, app_id: str, name: str) -> None:
        def open_(conn: PeerConnection) -> None:
            self.outbound_stream(conn, app_id, name)
            resolve(fut, None)

        self.with_connection(node_id, fut, open_)

    def connect_address(self, fut: concurrent.futures.Future[str], address: tuple[str, int]) -> None:
        """Dial an address whose node id is unknown (a seed); ``fut`` gets the id it proves."""
        assert self.endpoint is not None
        conn = self.endpoint.dial(address, None)
        self._address_dials[conn] = fut

    def close(self) -> None:
        """Stop dialling and fail everything still waiting (before the endpoint closes)."""
        self.transmitted()  # responses that already arrived are delivered, not failed
        self._closing = True
        for peer in self.peers.values():
            self._cancel_redial(peer)
            self._fail_waiters(peer, "node is shutting down")
        for fut, _, timer in self.pending.values():
            if timer is not None:
                timer.cancel()
            resolve(fut, error=NodeUnreachable("node is shutting down"))
        self.pending.clear()

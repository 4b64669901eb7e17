"""Application: a named channel for messages and requests between nodes."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .bridge import Waiter
from .errors import FrameError, MessageTooLarge, NodeUnreachable, RemoteError, RequestTimeout
from .transport.frames import Response, encode_request
from .transport.messaging import resolve

if TYPE_CHECKING:
    from .node import Node

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "default"

ReceiveHandler = Callable[[bytes, str], None]
RequestHandler = Callable[[bytes, str], bytes]


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, not {type(payload).__name__}")


class Application:
    """A channel that user code (and mycel) registers on a :class:`~nodosum.Node`.

    All methods are blocking and thread-safe. Handlers run on the node's worker
    threads, never on its event loop, so they may call these methods themselves.
    """

    def __init__(self, node: Node, app_id: str) -> None:
        self._node = node
        self.app_id = app_id
        self._receive_handlers: dict[str, ReceiveHandler] = {}
        self._default_receive: ReceiveHandler | None = None
        self._request_handler: RequestHandler | None = None
        self._request_inline = False

    def __repr__(self) -> str:
        return f"<Application {self.app_id!r} on {self._node.node_id!r}>"

    # -- handlers -----------------------------------------------------------------
    def set_receive_handler(self, handler: ReceiveHandler | None, stream: str | None = None) -> None:
        """Call ``handler(payload, sender_id)`` for each one-way message.

        With ``stream`` the handler serves only that named stream; otherwise it
        serves every stream without a handler of its own. Messages on one stream
        are delivered in order.
        """
        if stream is None:
            self._default_receive = handler
        elif handler is None:
            self._receive_handlers.pop(stream, None)
        else:
            self._receive_handlers[stream] = handler

    def set_request_handler(self, handler: RequestHandler | None, *, inline: bool = False) -> None:
        """Answer requests with ``handler(payload, sender_id) -> bytes``.

        If the handler raises, the caller gets :class:`~nodosum.errors.RemoteError`
        with the exception's type and message. Handlers run on the worker pool,
        concurrently. ``inline=True`` runs the handler on the event-loop thread
        instead, saving two thread hops per request: only for short handlers that
        never block (a blocking nodosum call there raises LoopThreadError).
        """
        self._request_inline = inline
        self._request_handler = handler

    def receive_handler(self, stream: str) -> ReceiveHandler | None:
        return self._receive_handlers.get(stream, self._default_receive)

    @property
    def request_handler(self) -> RequestHandler | None:
        return self._request_handler

    @property
    def request_handler_inline(self) -> bool:
        return self._request_inline

    # -- operations ------------------------------------------------------------------
    def nodes(self) -> list[str]:
        """Ids of every cluster member, this node included, sorted."""
        return self._node.member_ids()

    def send(self, payload: bytes, node_ids: Iterable[str] | None = None, *, stream: str = DEFAULT_STREAM) -> None:
        """Send a one-way message to ``node_ids`` (None: every other member).

        Returns once the message is queued; delivery is not acknowledged.
        Raises NodeUnreachable for an id that is not a member.
        """
        data = _as_bytes(payload)
        self._check_size(data)
        node = self._node
        targets = [n for n in node.member_ids() if n != node.node_id] if node_ids is None else list(node_ids)
        remote = [n for n in targets if n != node.node_id]
        if len(remote) != len(targets):
            handler = self.receive_handler(stream)
            if handler is not None:
                node._deliver_local(handler, data)
        if remote:
            node._loop.submit(node._messaging.start_send, remote, self.app_id, stream, data).result(
                node.config.request_timeout
            )

    def send_on_stream(self, name: str, payload: bytes, node_id: str) -> None:
        """Send a one-way message on the named stream to one node (opened if needed)."""
        self.send(payload, [node_id], stream=name)

    def open_stream(self, name: str, node_id: str, timeout: float | None = None) -> None:
        """Open the named stream to ``node_id`` now (it is also opened on first use)."""
        node = self._node
        if node_id == node.node_id:
            return
        timeout = node.config.request_timeout if timeout is None else timeout
        fut = node._loop.submit(node._messaging.open_stream, node_id, self.app_id, name)
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise RequestTimeout(f"could not open stream {name!r} to {node_id!r} within {timeout}s") from None

    def request(self, payload: bytes, node_id: str, timeout: float | None = None, *,
                stream: str = DEFAULT_STREAM) -> bytes:
        """Send a request to ``node_id`` and return its handler's response.

        Raises RequestTimeout, RemoteError (the remote handler raised, or there is
        none) or NodeUnreachable. Many requests may be in flight at once.
        """
        node = self._node
        data, timeout, correlation_id = self._prepare(payload, timeout)
        if node_id == node.node_id:
            return self._request_local(data, correlation_id, timeout)
        frame = self._request_frame(correlation_id, data)
        loop = node._loop
        waiter = Waiter()
        loop.post(node._messaging.start_request, waiter, node_id, self.app_id, stream, correlation_id, frame)
        try:
            return waiter.result(timeout)  # type: ignore[no-any-return]
        except TimeoutError:
            if waiter.abandon():
                loop.call_soon(node._messaging.cancel_request, correlation_id)
                raise RequestTimeout(f"no response from {node_id!r} within {timeout}s") from None
            return waiter.result(0)  # type: ignore[no-any-return]

    def request_future(self, payload: bytes, node_id: str, timeout: float | None = None, *,
                       stream: str = DEFAULT_STREAM) -> concurrent.futures.Future[bytes]:
        """Start a request without blocking; the future gets the response or the error.

        The future fails with RequestTimeout after ``timeout`` seconds (default:
        ``request_timeout``). Use it to have many requests in flight from one thread.
        """
        node = self._node
        data, timeout, correlation_id = self._prepare(payload, timeout)
        if node_id == node.node_id:
            return self._request_local_future(data, correlation_id, timeout)
        frame = self._request_frame(correlation_id, data)
        return node._loop.submit(node._messaging.start_request, node_id, self.app_id, stream, correlation_id,
                                 frame, timeout)

    def _prepare(self, payload: bytes, timeout: float | None) -> tuple[bytes, float, int]:
        """The payload as bytes, the effective timeout and a fresh correlation id."""
        node = self._node
        return (_as_bytes(payload), node.config.request_timeout if timeout is None else timeout,
                next(node._messaging.correlation_ids))

    def _request_frame(self, correlation_id: int, data: bytes) -> bytes:
        try:
            return encode_request(correlation_id, data, max_frame_size=self._node.config.max_frame_size)
        except FrameError as exc:
            raise MessageTooLarge(str(exc)) from None

    def _request_local_future(self, data: bytes, correlation_id: int,
                              timeout: float) -> concurrent.futures.Future[bytes]:
        node = self._node
        result: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        handler = self._request_handler
        if handler is None:
            result.set_exception(RemoteError(
                f"application {self.app_id!r} on node {node.node_id!r} has no request handler", node.node_id))
            return result
        work = node._loop.run_in_worker_future(node._messaging.run_handler, handler, data, node.node_id,
                                               correlation_id)

        def finish(done: concurrent.futures.Future[bytes]) -> None:
            frame = _decode_response(done.result())
            if frame.error is not None:
                resolve(result, error=RemoteError(frame.error, node.node_id))
            else:
                resolve(result, frame.payload)

        work.add_done_callback(finish)
        timed_out = RequestTimeout(f"no response from local handler within {timeout}s")
        loop = node._loop.loop
        assert loop is not None
        node._loop.call_soon(lambda: loop.call_later(timeout, resolve, result, None, timed_out))
        return result

    def _request_local(self, data: bytes, correlation_id: int, timeout: float) -> bytes:
        node = self._node
        handler = self._request_handler
        if handler is None:
            raise RemoteError(f"application {self.app_id!r} on node {node.node_id!r} has no request handler",
                              node.node_id)
        messaging = node._messaging
        fut = node._loop.run_in_worker_future(messaging.run_handler, handler, data, node.node_id, correlation_id)
        try:
            encoded = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RequestTimeout(f"no response from local handler within {timeout}s") from None
        frame = _decode_response(encoded)
        if frame.error is not None:
            raise RemoteError(frame.error, node.node_id)
        assert frame.payload is not None
        return frame.payload

    def _check_size(self, data: bytes) -> None:
        limit = self._node.config.max_frame_size - 16
        if len(data) > limit:
            raise MessageTooLarge(f"payload of {len(data)} bytes exceeds max_frame_size ({limit} usable)")


def _decode_response(encoded: bytes) -> Response:
    from .transport.frames import FrameDecoder

    (frame,) = FrameDecoder(len(encoded), expect_init=False).feed(encoded)
    assert isinstance(frame, Response)
    return frame


__all__ = ["Application", "DEFAULT_STREAM", "NodeUnreachable"]

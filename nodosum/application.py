"""Application: a named channel for messages and requests between nodes."""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterable

from .bridge import Waiter
from .errors import MessageTooLarge, RequestTimeout
from .port import NodePort

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

    All methods are blocking and thread-safe (``request_future`` does not block). Handlers
    run on the node's worker threads, never on its event loop, so they may call these
    methods themselves. The application reaches its node only through a
    :class:`~nodosum.port.NodePort`.
    """

    def __init__(self, port: NodePort, app_id: str) -> None:
        self._port = port
        self.app_id = app_id
        self._receive_handlers: dict[str, ReceiveHandler] = {}
        self._default_receive: ReceiveHandler | None = None
        self._request_handler: RequestHandler | None = None
        self._request_inline = False

    def __repr__(self) -> str:
        return f"<Application {self.app_id!r} on {self._port.node_id!r}>"

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
        """Ids of the members that registered this application, this node included if it did, sorted.

        With gossip membership a node advertises the applications it registered (see
        ``Node.register_application``); with static membership every member counts."""
        return self._port.nodes(self.app_id)

    def send(self, payload: bytes, node_ids: Iterable[str] | None = None, *, stream: str = DEFAULT_STREAM) -> None:
        """Send a one-way message to ``node_ids`` (None: every other node of this application).

        Returns once the message is queued; delivery is not acknowledged.
        Raises NodeUnreachable for an id that is not a member.
        """
        port = self._port
        data = self._checked(payload)
        targets = [n for n in self.nodes() if n != port.node_id] if node_ids is None else list(node_ids)
        port.check_can_block()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        port.send(done, targets, self.app_id, stream, data)
        done.result(port.request_timeout)

    def send_on_stream(self, name: str, payload: bytes, node_id: str) -> None:
        """Send a one-way message on the named stream to one node (opened if needed)."""
        self.send(payload, [node_id], stream=name)

    def open_stream(self, name: str, node_id: str, timeout: float | None = None) -> None:
        """Open the named stream to ``node_id`` now (it is also opened on first use)."""
        port = self._port
        timeout = port.request_timeout if timeout is None else timeout
        port.check_can_block()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        port.open_stream(done, node_id, self.app_id, name)
        try:
            done.result(timeout)
        except concurrent.futures.TimeoutError:
            done.cancel()
            raise RequestTimeout(f"could not open stream {name!r} to {node_id!r} within {timeout}s") from None

    def request(self, payload: bytes, node_id: str, timeout: float | None = None, *,
                stream: str = DEFAULT_STREAM) -> bytes:
        """Send a request to ``node_id`` and return its handler's response.

        Raises RequestTimeout, RemoteError (the remote handler raised, or there is
        none) or NodeUnreachable. Many requests may be in flight at once.
        """
        port = self._port
        data = _as_bytes(payload)
        if timeout is None:
            timeout = port.request_timeout
        port.check_can_block()
        waiter = Waiter()
        correlation_id = port.request(waiter, node_id, self.app_id, stream, data)
        try:
            response: bytes = waiter.result(timeout)
        except TimeoutError:
            if waiter.abandon():
                port.cancel(correlation_id)
                raise RequestTimeout(f"no response from {node_id!r} within {timeout}s") from None
            response = waiter.result(0)
        return response

    def request_future(self, payload: bytes, node_id: str, timeout: float | None = None, *,
                       stream: str = DEFAULT_STREAM) -> concurrent.futures.Future[bytes]:
        """Start a request without blocking; the future gets the response or the error.

        The future fails with RequestTimeout after ``timeout`` seconds (default:
        ``request_timeout``). Use it to have many requests in flight from one thread.
        """
        port = self._port
        data = _as_bytes(payload)
        result: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        port.request(result, node_id, self.app_id, stream, data, port.request_timeout if timeout is None else timeout)
        return result

    def _checked(self, payload: bytes) -> bytes:
        data = _as_bytes(payload)
        limit = self._port.max_payload
        if len(data) > limit:
            raise MessageTooLarge(f"payload of {len(data)} bytes exceeds max_frame_size ({limit} usable)")
        return data


__all__ = ["Application", "DEFAULT_STREAM"]

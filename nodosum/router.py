"""Router: the node's :class:`~nodosum.port.NodePort`, used by its applications and membership.

Each operation goes to the transport on the loop thread (posted from other threads,
called at once on the loop's own), or, when it targets this node, to the local
application's handler on the worker pool, with the same results and errors as a
remote call.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from .bridge import LoopThread, resolve
from .errors import FrameError, MessageTooLarge, NodeNotRunning, RemoteError, RequestTimeout
from .metrics import Counters
from .port import Address, Completion
from .transport.frames import encode_request_frame
from .transport.messaging import HandlerSource, Messaging, call_request_handler
from .transport.quic import QuicEndpoint
from .workers import SerialQueue


class Router:
    """Implements NodePort for one node (see :mod:`nodosum.port` for the contract)."""

    def __init__(self, node_id: str, loop_thread: LoopThread, messaging: Messaging, handlers: HandlerSource,
                 counters: Counters, *, request_timeout: float, max_frame_size: int,
                 nodes: Callable[[str], list[str]]) -> None:
        self._node_id = node_id
        self._loop_thread = loop_thread
        self._messaging = messaging
        self._handlers = handlers
        self._counters = counters
        self._request_timeout = request_timeout
        self._max_frame_size = max_frame_size
        self._nodes = nodes
        self._next_id = messaging.pending.next_id
        self._local = SerialQueue(loop_thread.run_in_worker, messaging.max_pending_requests, counters)
        self.endpoint: QuicEndpoint | None = None  # set once the node's socket is bound

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def counters(self) -> Counters:
        return self._counters

    @property
    def request_timeout(self) -> float:
        return self._request_timeout

    @property
    def max_payload(self) -> int:
        return self._max_frame_size - 16  # room for any frame's header

    def check_can_block(self) -> None:
        self._loop_thread.check_can_block()

    def nodes(self, app_id: str) -> list[str]:
        return self._nodes(app_id)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop_thread = self._loop_thread
        if loop_thread.in_loop_thread():
            fn(*args)
        else:
            loop_thread.post(fn, *args)

    # -- requests -------------------------------------------------------------------------------
    def request(self, result: Completion, node_id: str, app_id: str, stream: str, payload: bytes,
                timeout: float | None = None, address: Address | None = None) -> int:
        correlation_id = self._next_id()
        if node_id == self._node_id:
            self._request_local(result, app_id, payload, timeout)
            return correlation_id
        try:
            frame = encode_request_frame(correlation_id, payload, max_frame_size=self._max_frame_size)
        except FrameError as exc:
            raise MessageTooLarge(str(exc)) from None
        self._on_loop(self._messaging.start_request, result, node_id, app_id, stream, correlation_id, frame,
                      timeout, address)
        return correlation_id

    def cancel(self, correlation_id: int) -> None:
        self._loop_thread.post_if_running(self._messaging.cancel_request, correlation_id)

    def _request_local(self, result: Completion, app_id: str, payload: bytes, timeout: float | None) -> None:
        if not self._loop_thread.running:
            raise NodeNotRunning(f"node {self._node_id!r} is not running")
        found = self._handlers.request_handler(app_id)
        if found is None:
            resolve(result, error=RemoteError(
                f"application {app_id!r} on node {self._node_id!r} has no request handler", self._node_id))
            return
        handler = found[0]  # inline or not, it runs on a worker: the caller may be the loop itself

        def run() -> None:
            response, error = call_request_handler(handler, payload, self._node_id, self._counters)
            if error is None:
                resolve(result, response)
            else:
                resolve(result, error=RemoteError(error, self._node_id))

        self._loop_thread.run_in_worker(run)
        if timeout is not None:
            timed_out = RequestTimeout(f"no response from the local handler within {timeout}s")
            self._on_loop(self._expire_local, result, timeout, timed_out)

    def _expire_local(self, result: Completion, timeout: float, error: RequestTimeout) -> None:
        loop = self._loop_thread.loop
        assert loop is not None
        loop.call_later(timeout, resolve, result, None, error)

    # -- one-way messages and streams -------------------------------------------------------------
    def send(self, result: Completion, node_ids: list[str], app_id: str, stream: str, payload: bytes) -> None:
        remote = [n for n in node_ids if n != self._node_id]
        if len(remote) != len(node_ids):
            handler = self._handlers.receive_handler(app_id, stream)
            if handler is not None:
                self._local.put(handler, payload, self._node_id)
        if remote:
            self._on_loop(self._messaging.start_send, result, remote, app_id, stream, payload)
        else:
            resolve(result, None)

    def open_stream(self, result: Completion, node_id: str, app_id: str, stream: str) -> None:
        if node_id == self._node_id:
            resolve(result, None)
        else:
            self._on_loop(self._messaging.open_stream, result, node_id, app_id, stream)

    # -- membership's own traffic -----------------------------------------------------------------
    def connect(self, result: concurrent.futures.Future[str], address: Address) -> None:
        self._messaging.connections.connect_address(result, address)

    def send_datagram(self, data: bytes, address: Address) -> None:
        endpoint = self.endpoint
        if endpoint is not None and endpoint.transport is not None:
            endpoint.transport.sendto(data, address)

"""NodePort: the one way applications and membership reach their node.

A Node gives each of its Applications, and its membership, one object with this
interface (a :class:`nodosum.router.Router`). Neither imports the transport nor reads
the Node's attributes: what they may ask of the node is exactly what is here, so the
transport, membership and applications can change without reaching into each other.

Operations that take a ``result`` return at once; ``result`` (a
``concurrent.futures.Future`` or a :class:`nodosum.bridge.Waiter`) is completed later,
on the loop thread or a worker. They may be called from any thread, the loop's own
included; a caller that is about to block on ``result`` calls ``check_can_block()``
first (a blocking call on the loop thread would deadlock it).
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Protocol

from .metrics import Counters

Address = tuple[str, int]


class Completion(Protocol):
    """Where the outcome of an operation goes (a Future, or a Waiter)."""

    def done(self) -> bool: ...

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


class NodePort(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def counters(self) -> Counters:
        """The node's counters (``Node.stats()``)."""

    @property
    def request_timeout(self) -> float:
        """The node's default request timeout, in seconds."""

    @property
    def max_payload(self) -> int:
        """The largest payload one message or request may carry, in bytes."""

    def check_can_block(self) -> None:
        """Raise NodeNotRunning or LoopThreadError unless the caller may block on the node."""

    def request(self, result: Completion, node_id: str, app_id: str, stream: str, payload: bytes,
                timeout: float | None = None, address: Address | None = None) -> int:
        """Send a request to ``app_id`` on ``node_id`` (this node's own handler if it is this node).

        ``result`` gets the response payload, or RemoteError, NodeUnreachable, BackpressureError,
        or RequestTimeout once ``timeout`` has passed (without one, the caller times out on its own
        side and calls ``cancel``). ``address``: where to reach a node that is not a member
        (membership's own exchanges). Raises MessageTooLarge at once. Returns the request's id.
        """

    def cancel(self, correlation_id: int) -> None:
        """The caller gave up waiting for this request (a late response is dropped)."""

    def send(self, result: Completion, node_ids: list[str], app_id: str, stream: str, payload: bytes) -> None:
        """Queue a one-way message to each node (this node included, if listed); ``result`` gets
        None once queued, or NodeUnreachable / BackpressureError."""

    def open_stream(self, result: Completion, node_id: str, app_id: str, stream: str) -> None:
        """Open a named stream to ``node_id`` now (it also opens on first use)."""

    def nodes(self, app_id: str) -> list[str]:
        """Ids of the members that registered ``app_id``, sorted (this node's own view)."""

    def connect(self, result: concurrent.futures.Future[str], address: Address) -> None:
        """Open a connection to an address whose node id is unknown (a seed); ``result`` gets
        the id its certificate proves (or NodeUnreachable). Loop thread only."""

    def send_datagram(self, data: bytes, address: Address) -> None:
        """Send one UDP datagram from the node's socket (gossip). Loop thread only."""

"""The exceptions nodosum raises: one hierarchy under :class:`NodosumError`."""

from __future__ import annotations


class NodosumError(Exception):
    """Base class of every error nodosum raises."""


class ConfigError(NodosumError, ValueError):
    """A configuration value is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CertificateError(NodosumError):
    """A certificate or key could not be loaded, issued or verified."""


class PeerRejected(NodosumError):
    """A peer's certificate or claimed identity was refused."""


class NodeNotRunning(NodosumError):
    """The node is not started, or has been shut down."""


class LoopThreadError(NodosumError, RuntimeError):
    """A blocking method was called from the node's own event-loop thread."""


class ApplicationError(NodosumError):
    """An application id is already registered, or not registered."""


class RequestTimeout(NodosumError, TimeoutError):
    """A request got no response within its timeout."""


class NodeUnreachable(NodosumError, ConnectionError):
    """The target node is not a member, or its connection failed."""


class RemoteError(NodosumError):
    """The remote handler raised, or the remote application has no handler.

    ``remote_message`` holds the text the remote node sent back.
    """

    def __init__(self, remote_message: str, node_id: str | None = None) -> None:
        where = f" on {node_id}" if node_id else ""
        super().__init__(f"remote error{where}: {remote_message}")
        self.remote_message = remote_message
        self.node_id = node_id


class FrameError(NodosumError, ValueError):
    """Bytes on a stream do not form a valid frame (malformed, oversize, out of order)."""


class BackpressureError(NodosumError):
    """A send queue towards a peer is full: the peer cannot keep up."""


class MessageTooLarge(NodosumError, ValueError):
    """A payload does not fit in one frame (``max_frame_size``)."""


class ReadyTimeout(NodosumError, TimeoutError):
    """``Node.ready()`` gave up before the node had joined its cluster."""

"""nodosum: the cluster layer — membership, QUIC transport with mutual TLS, applications."""

import logging
from typing import TYPE_CHECKING, Any

from .config import NodeConfig
from .errors import (
    ApplicationError,
    BackpressureError,
    ConfigError,
    MessageTooLarge,
    NodeNotRunning,
    NodosumError,
    NodeUnreachable,
    ReadyTimeout,
    RemoteError,
    RequestTimeout,
)
from .membership import Member, MemberEvent, MemberEventKind
from .metrics import Counters

if TYPE_CHECKING:
    from .application import Application
    from .node import Node

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # Node and Application load the transport (and with it the certificate module) on
    # first use, so that `python -m nodosum.certs` runs without importing itself twice.
    if name == "Node":
        from .node import Node

        return Node
    if name == "Application":
        from .application import Application

        return Application
    raise AttributeError(f"module 'nodosum' has no attribute {name!r}")

__all__ = [
    "Application", "ApplicationError", "BackpressureError", "ConfigError", "Counters", "Member", "MemberEvent", "MemberEventKind",
    "MessageTooLarge", "Node", "NodeConfig", "NodeNotRunning", "NodeUnreachable", "NodosumError",
    "ReadyTimeout", "RemoteError", "RequestTimeout",
]

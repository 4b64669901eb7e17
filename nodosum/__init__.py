"""nodosum: the cluster layer — membership, QUIC transport with mutual TLS, applications."""

import logging

from .application import Application
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
from .node import Node

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Application", "ApplicationError", "BackpressureError", "ConfigError", "Member", "MemberEvent", "MemberEventKind",
    "MessageTooLarge", "Node", "NodeConfig", "NodeNotRunning", "NodeUnreachable", "NodosumError",
    "ReadyTimeout", "RemoteError", "RequestTimeout",
]

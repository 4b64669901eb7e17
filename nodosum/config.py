"""NodeConfig: every setting of a node, validated at construction."""

from __future__ import annotations

import os
import re
import uuid
import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Union

from .errors import ConfigError

PemSource = Union[bytes, str, "os.PathLike[str]"]

NODE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
APP_ID_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,255}$")


@dataclass(frozen=True)
class TimingProfile:
    """Connection timings; ``lan`` and ``local`` mirror memberlist's presets."""

    idle_timeout: float  # QUIC's: a connection that hears nothing (not even keep-alives) for this long is dead
    keepalive_interval: float
    connect_timeout: float
    reconnect_min: float
    reconnect_max: float
    connection_idle_timeout: float  # ours: a connection with no application traffic for this long is closed


PROFILES: dict[str, TimingProfile] = {
    "lan": TimingProfile(
        idle_timeout=30.0, keepalive_interval=5.0, connect_timeout=5.0, reconnect_min=0.2, reconnect_max=10.0,
        connection_idle_timeout=25.0,
    ),
    "local": TimingProfile(
        idle_timeout=10.0, keepalive_interval=2.0, connect_timeout=2.0, reconnect_min=0.05, reconnect_max=2.0,
        connection_idle_timeout=8.0,
    ),
}


TIMING_FIELDS = ("idle_timeout", "keepalive_interval", "connect_timeout", "reconnect_min", "reconnect_max",
                 "connection_idle_timeout")


@dataclass(frozen=True)
class StaticPeer:
    """A peer named in the static peer list: its node id and QUIC address."""

    node_id: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: Any) -> StaticPeer:
        if isinstance(value, StaticPeer):
            return value
        if isinstance(value, str):
            node_id, sep, addr = value.partition("@")
            host, sep2, port = addr.rpartition(":")
            if not sep or not sep2 or not port.isdigit():
                raise ConfigError("peers", f"{value!r} is not of the form 'node_id@host:port'")
            return cls(node_id, host.strip("[]"), int(port))
        if isinstance(value, tuple) and len(value) == 2:
            node_id, (host, port) = value
            return cls(str(node_id), str(host), int(port))
        raise ConfigError("peers", f"{value!r} is neither 'node_id@host:port' nor (node_id, (host, port))")


def parse_address(value: Any, field_name: str) -> tuple[str, int]:
    """'host:port' (or a (host, port) pair) as a tuple."""
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
    elif isinstance(value, str):
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(field_name, f"{value!r} is not of the form 'host:port'")
        host, port = host.strip("[]"), int(port_text)
    else:
        raise ConfigError(field_name, f"{value!r} is not 'host:port'")
    if not host or not isinstance(port, int) or not 0 < port <= 65535:
        raise ConfigError(field_name, f"{value!r} has no valid host and port")
    return (str(host), port)


def parse_gossip_key(value: Any) -> bytes:
    """A 16, 24 or 32-byte AES key, given raw or base64-encoded."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("gossip_keys", "a text key must be base64") from None
    if not isinstance(value, (bytes, bytearray)) or len(value) not in (16, 24, 32):
        raise ConfigError("gossip_keys", "each key must be 16, 24 or 32 bytes (AES-128/192/256)")
    return bytes(value)


def _random_node_id() -> str:
    return "node-" + uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one node. Invalid values raise :class:`ConfigError` naming the field.

    Identity: give ``ca_cert`` plus either ``ca_key`` (the node issues itself a
    certificate valid for ``cert_validity`` seconds) or ``cert`` and ``key``.
    PEM values may be bytes, PEM text, or file paths.
    """

    ca_cert: PemSource | None = None
    ca_key: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    node_id: str = field(default_factory=_random_node_id)
    host: str = "127.0.0.1"
    port: int = 7946
    peers: Sequence[Any] = ()
    membership: str | None = None
    seeds: Sequence[str] = ()
    gossip_keys: Sequence[bytes | str] = ()
    gossip_label: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    swim: Mapping[str, Any] = field(default_factory=dict)
    leave_timeout: float = 2.0
    profile: str = "lan"
    idle_timeout: float | None = None
    keepalive_interval: float | None = None
    connect_timeout: float | None = None
    reconnect_min: float | None = None
    reconnect_max: float | None = None
    connection_idle_timeout: float | None = None
    request_timeout: float = 5.0
    max_frame_size: int = 8 * 1024 * 1024
    max_pending_requests: int = 65536
    max_queued_bytes: int = 64 * 1024 * 1024
    max_connections: int = 1024
    max_open_connections: int = 256
    handler_threads: int = 16
    cert_validity: float = 7 * 24 * 3600.0
    use_uvloop: bool | None = None

    def __post_init__(self) -> None:
        if self.ca_cert is None:
            raise ConfigError("ca_cert", "the cluster CA certificate is required")
        if not isinstance(self.node_id, str) or not NODE_ID_RE.match(self.node_id):
            raise ConfigError("node_id", f"{self.node_id!r}: use 1-128 characters of A-Z a-z 0-9 . _ -")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host", "must be a non-empty address string")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError("port", f"{self.port!r} is not a port number (0-65535)")
        if self.profile not in PROFILES:
            raise ConfigError("profile", f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        peers = tuple(StaticPeer.parse(p) for p in self.peers)
        for peer in peers:
            if not NODE_ID_RE.match(peer.node_id):
                raise ConfigError("peers", f"peer node id {peer.node_id!r} is not valid")
            if not 0 < peer.port <= 65535:
                raise ConfigError("peers", f"peer {peer.node_id!r} has port {peer.port}")
        object.__setattr__(self, "peers", peers)
        membership = self.membership or ("static" if peers else "gossip")
        if membership not in ("gossip", "static"):
            raise ConfigError("membership", f"{self.membership!r}: choose 'gossip' or 'static'")
        if membership == "gossip" and peers:
            raise ConfigError("peers", "a static peer list needs membership='static'; gossip joins through seeds")
        if membership == "static" and self.seeds:
            raise ConfigError("seeds", "seeds are for gossip membership, not membership='static'")
        object.__setattr__(self, "membership", membership)
        object.__setattr__(self, "seeds", tuple(parse_address(a, "seeds") for a in self.seeds))
        object.__setattr__(self, "gossip_keys", tuple(parse_gossip_key(k) for k in self.gossip_keys))
        if not isinstance(self.gossip_label, str) or len(self.gossip_label.encode()) > 255:
            raise ConfigError("gossip_label", "must be a string of at most 255 bytes")
        if not isinstance(self.meta, Mapping):
            raise ConfigError("meta", "must be a dict of JSON-serializable values")
        from .membership.config import SwimConfig  # here to keep config importable alone
        from .membership.meta import encode_meta

        try:
            encode_meta(dict(self.meta), SwimConfig.profile(self.profile, **dict(self.swim)).max_meta_size)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError("meta", str(exc)) from None
        for name in TIMING_FIELDS:
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, getattr(PROFILES[self.profile], name))
            elif not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, f"{value!r} must be a positive number of seconds")
        for name in ("request_timeout", "cert_validity", "leave_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, f"{value!r} must be a positive number of seconds")
        for name in ("max_frame_size", "max_pending_requests", "max_queued_bytes", "max_connections",
                     "max_open_connections", "handler_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(name, f"{value!r} must be a positive integer")
        if self.max_frame_size < 1024:
            raise ConfigError("max_frame_size", "must be at least 1024 bytes")

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with some fields changed (validated again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if "profile" in changes:
            for name in TIMING_FIELDS:
                values[name] = changes.get(name)
        values.update(changes)
        return NodeConfig(**values)

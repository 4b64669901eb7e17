"""NodeConfig: every setting of a node, validated at construction; ResolvedSettings: their parsed forms.

A NodeConfig keeps each value as the user gave it (``port="7946-7961"`` stays a
string, an unset timing stays None). :meth:`NodeConfig.resolve` builds, once per
node, the forms the node works with: a port range, seed addresses with their ranges
expanded, gossip keys as bytes, every timing filled in from the profile.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Union

from .errors import ConfigError
from .membership.config import SwimConfig
from .membership.meta import encode_meta

PemSource = Union[bytes, str, "os.PathLike[str]"]
PortSetting = Union[int, str, tuple[int, int]]
Address = tuple[str, int]

NODE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
APP_ID_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,255}$")
MAX_PORT_RANGE = 256  # ports in one range (a seed range is dialled port by port)
WILDCARDS = ("0.0.0.0", "::", "")
#: The metadata key under which a node advertises the applications it registered (gossip).
APPS_META_KEY = "nodosum.apps"


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

TIMING_FIELDS = tuple(f.name for f in fields(TimingProfile))


@dataclass(frozen=True)
class StaticPeer:
    """A peer named in the static peer list: its node id and QUIC address."""

    node_id: str
    host: str
    port: int

    @classmethod
    def parse(cls, value: Any) -> StaticPeer:
        if isinstance(value, StaticPeer):
            peer = value
        elif isinstance(value, str):
            node_id, sep, addr = value.partition("@")
            host, sep2, port = addr.rpartition(":")
            if not sep or not sep2 or not port.isdigit():
                raise ConfigError("peers", f"{value!r} is not of the form 'node_id@host:port'")
            peer = cls(node_id, host.strip("[]"), int(port))
        elif isinstance(value, tuple) and len(value) == 2:
            node_id, (host, port) = value
            peer = cls(str(node_id), str(host), int(port))
        else:
            raise ConfigError("peers", f"{value!r} is neither 'node_id@host:port' nor (node_id, (host, port))")
        if not NODE_ID_RE.match(peer.node_id):
            raise ConfigError("peers", f"peer node id {peer.node_id!r} is not valid")
        if not 0 < peer.port <= 65535:
            raise ConfigError("peers", f"peer {peer.node_id!r} has port {peer.port}")
        return peer


def parse_ports(value: Any, field_name: str = "port") -> tuple[int, int]:
    """A port, ``"first-last"`` or ``(first, last)`` as an inclusive range; 0 alone means any free port."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"{value!r} is not a port number")
    if isinstance(value, int):
        first = last = value
    elif isinstance(value, str):
        text = value.strip()
        low, sep, high = text.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ConfigError(field_name, f"{value!r} is neither a port nor a range 'first-last'")
        first, last = int(low), int(high if sep else low)
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(p, int) for p in value):
        first, last = value
    else:
        raise ConfigError(field_name, f"{value!r} is neither a port nor a range 'first-last' / (first, last)")
    if (first, last) == (0, 0):
        return 0, 0
    if not 0 < first <= last <= 65535:
        raise ConfigError(field_name, f"{value!r} is not a port number (1-65535) or an ascending range of them")
    if last - first >= MAX_PORT_RANGE:
        raise ConfigError(field_name, f"{value!r} spans more than {MAX_PORT_RANGE} ports")
    return first, last


def parse_seed(value: Any, own_ports: tuple[int, int], field_name: str = "seeds") -> list[Address]:
    """The addresses one seed names: ``"host:port"``, ``"host:first-last"`` (every port of the
    range), ``"host"`` (every port of ``own_ports``, the node's own setting), or ``(host, port)``."""
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError(field_name, f"{value!r} is not (host, port)")
        ports = (port, port)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # [v6 address] or [v6 address]:port
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:  # a bare host name, IPv4 or IPv6 address
            host, port_text = text, ""
        if port_text:
            ports = parse_ports(port_text, field_name)
        elif own_ports == (0, 0):
            raise ConfigError(field_name, f"{value!r} names no port, and this node's port is 0 (any free port)")
        else:
            ports = own_ports
    else:
        raise ConfigError(field_name, f"{value!r} is not 'host:port'")
    if not host or not 0 < ports[0] <= ports[1] <= 65535:
        raise ConfigError(field_name, f"{value!r} has no valid host and port")
    return [(host, port) for port in range(ports[0], ports[1] + 1)]


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
class ResolvedSettings:
    """A NodeConfig's values in the forms the node uses (built by :meth:`NodeConfig.resolve`)."""

    ports: tuple[int, int]  # bind the first free port of this range; (0, 0): any free port
    advertise: str | None  # what peers are told; None: the bound address (detected for a wildcard host)
    membership: str  # "gossip" or "static"
    peers: tuple[StaticPeer, ...]
    seeds: tuple[Address, ...]  # every address to try, ranges expanded
    gossip_keys: tuple[bytes, ...]
    timing: TimingProfile
    swim: SwimConfig


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one node. Invalid values raise :class:`ConfigError` naming the field.

    Identity: give ``ca_cert`` plus either ``ca_key`` (the node issues itself a
    certificate valid for ``cert_validity`` seconds) or ``cert`` and ``key``.
    PEM values may be bytes, PEM text, or file paths.

    Addresses: ``port`` is a port, or a range (``"7946-7961"`` or ``(7946, 7961)``) of
    which the node takes the first free one. ``host="0.0.0.0"`` binds every interface;
    ``advertise`` is the address peers are told (by default the bound address, or for
    a wildcard host the address of the interface that routes to the first seed).
    ``seeds`` are ``"host:port"``, ``"host:first-last"`` or just ``"host"`` (this
    node's own port setting): a joiner tries each address until one answers.
    """

    ca_cert: PemSource | None = None
    ca_key: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    node_id: str = field(default_factory=_random_node_id)
    host: str = "127.0.0.1"
    port: PortSetting = 7946
    advertise: str | None = None
    peers: Sequence[Any] = ()
    membership: str | None = None
    seeds: Sequence[str | Address] = ()
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
        if self.advertise is not None and (not isinstance(self.advertise, str) or self.advertise in WILDCARDS):
            raise ConfigError("advertise", f"{self.advertise!r} is not an address peers can reach; give this "
                                           "node's own address (leave it unset to detect it)")
        if self.profile not in PROFILES:
            raise ConfigError("profile", f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        if not isinstance(self.gossip_label, str) or len(self.gossip_label.encode()) > 255:
            raise ConfigError("gossip_label", "must be a string of at most 255 bytes")
        if not isinstance(self.meta, Mapping):
            raise ConfigError("meta", "must be a dict of JSON-serializable values")
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
        settings = self.resolve()  # validates everything that has a parsed form
        if APPS_META_KEY in self.meta:
            raise ConfigError("meta", f"the key {APPS_META_KEY!r} is reserved (advertised applications)")
        try:
            encode_meta(dict(self.meta), settings.swim.max_meta_size)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError("meta", str(exc)) from None

    def resolve(self) -> ResolvedSettings:
        """The parsed forms of these settings (raises ConfigError naming the field)."""
        ports = parse_ports(self.port)
        peers = tuple(StaticPeer.parse(p) for p in self.peers)
        membership = self.membership or ("static" if peers else "gossip")
        if membership not in ("gossip", "static"):
            raise ConfigError("membership", f"{self.membership!r}: choose 'gossip' or 'static'")
        if membership == "gossip" and peers:
            raise ConfigError("peers", "a static peer list needs membership='static'; gossip joins through seeds")
        if membership == "static" and self.seeds:
            raise ConfigError("seeds", "seeds are for gossip membership, not membership='static'")
        if isinstance(self.seeds, str):
            raise ConfigError("seeds", "must be a list of addresses, not one string")
        seeds: dict[Address, None] = {}
        for seed in self.seeds:
            seeds.update(dict.fromkeys(parse_seed(seed, ports)))
        timing = {}
        for name in TIMING_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = getattr(PROFILES[self.profile], name)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, f"{value!r} must be a positive number of seconds")
            timing[name] = float(value)
        return ResolvedSettings(
            ports=ports, advertise=self.advertise, membership=membership, peers=peers, seeds=tuple(seeds),
            gossip_keys=tuple(parse_gossip_key(k) for k in self.gossip_keys), timing=TimingProfile(**timing),
            swim=SwimConfig.profile(self.profile, **dict(self.swim)),
        )

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with some fields changed (validated again). Timings not set explicitly
        follow the profile, so ``replace(profile="local")`` changes them too."""
        return replace(self, **changes)

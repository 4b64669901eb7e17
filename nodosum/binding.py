"""Where a node listens, and the address it tells its peers.

Many processes of one deployment share a configuration (a pre-fork server's workers):
each takes the first free port of the configured range, and a node bound to every
interface (``0.0.0.0``) advertises the address of the interface that routes to its
first seed, or else the host's primary address. Seeds that name the node itself
(every worker lists the same range) are left out of its own join.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from .config import WILDCARDS, Address
from .errors import ConfigError

logger = logging.getLogger(__name__)

# Destinations for finding the primary address: documentation ranges (RFC 5737, RFC 3849),
# never sent to: connecting a UDP socket only asks the kernel for a route.
_PRIMARY_PROBES = {socket.AF_INET: ("192.0.2.1", 9), socket.AF_INET6: ("2001:db8::1", 9)}


def bind_udp(host: str, ports: tuple[int, int]) -> socket.socket:
    """A UDP socket bound to ``host`` on the first free port of ``ports`` (inclusive; (0, 0): any)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, ports[0], type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise ConfigError("host", f"cannot resolve {host!r}: {exc}") from None
    for port in range(ports[0], ports[1] + 1):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
                except OSError:
                    pass  # the kernel's limit applies; larger buffers only absorb bursts
            sock.bind((address[0], port, *address[2:]))
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError("host", f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    where = f"{ports[0]}" if ports[0] == ports[1] else f"every port of {ports[0]}-{ports[1]}"
    raise ConfigError("port", f"{host}:{where} is already in use")


def _route_source(family: int, destination: tuple[Any, ...]) -> str | None:
    """The local address the kernel would send from to reach ``destination`` (nothing is sent)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(destination)
            source: str = probe.getsockname()[0]
    except OSError:
        return None
    return None if source in WILDCARDS else source


def advertised_host(bound_host: str, advertise: str | None, seeds: Iterable[Address]) -> str:
    """What peers are told: ``advertise`` if given, else the bound address, else (bound to
    every interface) the address that routes to the first seed, or the primary address."""
    if advertise is not None:
        return advertise
    if bound_host not in WILDCARDS:
        return bound_host
    family = socket.AF_INET6 if ":" in bound_host else socket.AF_INET
    candidates = [seed for seed in seeds][:1] + [_PRIMARY_PROBES[family]]
    for destination in candidates:
        try:
            resolved = socket.getaddrinfo(destination[0], destination[1], family, socket.SOCK_DGRAM)[0][4]
        except OSError:
            continue
        source = _route_source(family, resolved)
        if source is not None:
            logger.info("advertising %s (the interface that routes to %s)", source, destination[0])
            return source
    raise ConfigError("advertise", f"bound to {bound_host!r} and no address to advertise could be detected "
                                   "(no route to a seed or a default route); set advertise")


def is_self(seed: Address, bound: Address, advertised: str) -> bool:
    """True if ``seed`` names this node's own socket (so it is no use joining through it)."""
    host, port = seed
    if port != bound[1]:
        return False
    if host in (bound[0], advertised):
        return True
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: dialling it finds out (a node refuses its own id)
    return loopback and (bound[0] in WILDCARDS or ipaddress.ip_address(bound[0]).is_loopback)

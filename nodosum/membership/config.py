"""SwimConfig: the timings of the SWIM membership, with memberlist's LAN / local presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

# Field -> (kind, minimum, maximum). kind "float" accepts int or float; "int" rejects bool and float.
_LIMITS: dict[str, tuple[str, float, float]] = {
    "probe_interval": ("float", 1e-3, 3600.0),
    "probe_timeout": ("float", 1e-3, 3600.0),
    "indirect_checks": ("int", 0, 64),
    "suspicion_mult": ("int", 1, 1000),
    "suspicion_max_timeout_mult": ("int", 1, 1000),
    "retransmit_mult": ("int", 1, 1000),
    "gossip_interval": ("float", 1e-3, 3600.0),
    "gossip_nodes": ("int", 0, 64),
    "gossip_to_the_dead_time": ("float", 0.0, 7 * 86400.0),
    "push_pull_interval": ("float", 0.0, 7 * 86400.0),
    "awareness_max_multiplier": ("int", 1, 1000),
    "dead_node_reclaim_time": ("float", 0.0, 7 * 86400.0),
    "max_packet_size": ("int", 1200, 65507),
    "max_meta_size": ("int", 2, 512),
    "reconnect_interval": ("float", 0.0, 7 * 86400.0),
    "reconnect_timeout": ("float", 0.0, 365 * 86400.0),
    "greet_new_members": ("bool", 0, 1),
    "suspicion_checks": ("int", 0, 10),
}


@dataclass(frozen=True)
class SwimConfig:
    """Timings and limits of the gossip membership (seconds, bytes).

    Names follow hashicorp/memberlist's Config in snake_case; the defaults are
    DefaultLANConfig. ``push_pull_interval`` and ``reconnect_interval`` of 0
    disable those timers; ``gossip_nodes`` of 0 disables periodic gossip.

    Beyond memberlist: ``reconnect_interval`` / ``reconnect_timeout`` (as in
    Serf: failed members are retried with a push-pull so a healed partition
    merges back), ``max_meta_size`` (encoded user metadata limit) and
    ``greet_new_members`` (send our own alive straight to every member that
    joins: sub-second convergence for gossip-only deployments, at the price of
    O(N^2) packets when N nodes start at once; off by default, as push-pull
    gives the same result) and
    ``suspicion_checks`` (before a suspicion expires, send the suspect that
    many direct "you are suspected" messages, one probe interval apart, so a
    live node that we missed refuting gets another chance; 0 = memberlist).
    """

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    push_pull_interval: float = 30.0
    awareness_max_multiplier: int = 8
    dead_node_reclaim_time: float = 0.0
    max_packet_size: int = 1400
    max_meta_size: int = 512
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0
    greet_new_members: bool = False
    suspicion_checks: int = 3

    def __post_init__(self) -> None:
        for name, (kind, low, high) in _LIMITS.items():
            value = getattr(self, name)
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(name, f"must be a bool, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(name, f"must be a number, not {value!r}")
            if kind == "int" and not isinstance(value, int):
                raise ConfigError(name, f"must be an integer, not {value!r}")
            if not math.isfinite(value) or not low <= value <= high:
                raise ConfigError(name, f"must be between {low:g} and {high:g}, not {value!r}")
            if kind == "float":
                object.__setattr__(self, name, float(value))
        if self.probe_timeout > self.probe_interval:
            raise ConfigError(
                "probe_timeout", f"{self.probe_timeout:g}s exceeds probe_interval {self.probe_interval:g}s"
            )

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> SwimConfig:
        """The ``lan`` or ``local`` preset, with any field overridden by keyword."""
        try:
            base = PROFILES[name]
        except (KeyError, TypeError):
            raise ConfigError("profile", f"unknown profile {name!r} (choose from {', '.join(PROFILES)})") from None
        known = {f.name for f in fields(cls)}
        for key in overrides:
            if key not in known:
                raise ConfigError(key, "unknown membership setting")
        return cls(**{**base, **overrides})


# memberlist DefaultLANConfig and DefaultLocalConfig (local = LAN with these changes).
PROFILES: dict[str, dict[str, Any]] = {
    "lan": {},
    "local": {
        "indirect_checks": 1,
        "retransmit_mult": 2,
        "suspicion_mult": 3,
        "push_pull_interval": 15.0,
        "probe_timeout": 0.2,
        "probe_interval": 1.0,
        "gossip_interval": 0.1,
        "gossip_to_the_dead_time": 15.0,
        "reconnect_interval": 15.0,
    },
}

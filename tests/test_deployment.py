"""Deployment as pre-fork servers do it: many processes from one configuration, in any order.

Every process is given the same settings: a port range (each takes the first free
port) and a seed that names only the host (every port of the range is tried). They
start in a random order, so the first finds no seed at all and serves alone until
others appear; they must still end as one cluster.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import pytest

from .conftest import reap_child, spawn_child, wait_for

PROCESSES = 4
RANGE = 8  # ports in the shared range (more than processes: some may be taken by others)


def free_range(rng: random.Random) -> int:
    """The first port of RANGE consecutive free UDP ports on 127.0.0.1, outside the ephemeral range."""
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        socks = []
        try:
            for port in range(base, base + RANGE):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    pytest.skip("no free port range found")


def read_members(path: Path) -> list[str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(2))
def test_processes_from_one_config_in_random_order_end_as_one_cluster(ca, tmp_path, seed):
    rng = random.Random(seed)
    base = free_range(rng)
    shared = {"ca": [ca[0].decode(), ca[1].decode()], "port": f"{base}-{base + RANGE - 1}", "seeds": ["127.0.0.1"],
              "swim": {"probe_interval": 0.2, "probe_timeout": 0.1, "gossip_interval": 0.05}}
    ids = [f"w{i}" for i in range(PROCESSES)]
    rng.shuffle(ids)
    children = []
    start = time.monotonic()
    try:
        for node_id in ids:
            spec = {**shared, "node_id": node_id, "members_file": str(tmp_path / node_id)}
            child, address = spawn_child("node_child.py", spec)
            children.append(child)
            assert address[0] == "127.0.0.1" and base <= address[1] < base + RANGE
            time.sleep(rng.random())  # the next worker comes up a moment later, or at once
        everyone = sorted(ids)
        assert wait_for(lambda: all(read_members(tmp_path / i) == everyone for i in ids), timeout=25,
                        interval=0.1), {i: read_members(tmp_path / i) for i in ids}
        assert time.monotonic() - start < 30
    finally:
        for child in children:
            reap_child(child)

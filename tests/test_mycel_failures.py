"""A node killed with SIGKILL (no goodbye) loses no acknowledged write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from mycel import Cache

from .conftest import wait_for

CHILD = os.path.join(os.path.dirname(__file__), "cache_child.py")


def test_killed_node_keys_are_still_readable_and_writable(make_cluster, ca):
    nodes = make_cluster(["k0", "k1", "k2"])
    caches = [Cache(n, replicas=3, remote_timeout=0.5) for n in nodes]
    child = subprocess.Popen([sys.executable, CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        peers = [[n.node_id, *n.address] for n in nodes]
        child.stdin.write(json.dumps({"ca": [ca[0].decode(), ca[1].decode()], "node_id": "k9",
                                      "peers": peers, "replicas": 3}) + "\n")
        child.stdin.flush()
        host, port = child.stdout.readline().split()
        for node in nodes:
            node.add_peer("k9", host, int(port))
        assert child.stdout.readline().strip() == "ready"
        for node in nodes:
            node.ready(20)
        caches[0].create_bucket("durable")
        keys = {f"d{i}": i for i in range(120)}
        caches[1].put_many("durable", keys)
        assert wait_for(lambda: caches[2].get_many("durable", list(keys)) == keys, timeout=20)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # every acknowledged write is still readable from every survivor
        for cache in caches:
            assert cache.get_many("durable", list(keys)) == keys
        for i, key in enumerate(list(keys)[:30]):
            assert caches[i % 3].get("durable", key) == keys[key]
        # and still writable (2 of 3 replicas answer)
        caches[0].put_many("durable", {k: -v for k, v in keys.items()})
        assert caches[2].get_many("durable", list(keys)) == {k: -v for k, v in keys.items()}
        assert caches[0].stats()["hints_pending"] > 0  # writes the dead replica missed are remembered
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdin.close()
        child.stdout.close()
        for cache in caches:
            cache.close(handoff=False)

"""A node killed with SIGKILL (no goodbye) loses no acknowledged write."""

from __future__ import annotations

import os
import signal
import subprocess

from mycel import Cache
from mycel.placement import Placement
from mycel.protocol import GetRequest, GetResponse, Op, decode_response, encode_request
from nodosum import NodeUnreachable, RequestTimeout

from .conftest import reap_child, spawn_child, wait_for



def _spawn(ca, node_id: str, peers: list, port: int = 0) -> tuple[subprocess.Popen, tuple[str, int]]:
    """A cache node (tests/cache_child.py) in a child process, running but not yet ready."""
    return spawn_child("cache_child.py", {"ca": [ca[0].decode(), ca[1].decode()], "node_id": node_id,
                                          "peers": peers, "replicas": 3, "port": port})


def test_killed_node_keys_are_still_readable_and_writable(make_cluster, ca):
    nodes = make_cluster(["k0", "k1", "k2"])
    caches = [Cache(n, replicas=3, remote_timeout=0.5) for n in nodes]
    child, (host, port) = _spawn(ca, "k9", [[n.node_id, *n.address] for n in nodes])
    try:
        for node in nodes:
            node.add_peer("k9", host, port)
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
        reap_child(child)
        for cache in caches:
            cache.close(handoff=False)


def _held_by(cache: Cache, node_id: str, bucket: str, keys: list[str]) -> set[str]:
    """The keys that ``node_id``'s own store holds (a replica read, no fallback); none if it does not answer."""
    try:
        answer = cache._app.request(encode_request(GetRequest(bucket, keys)), node_id, 2)
    except (NodeUnreachable, RequestTimeout):
        return set()
    response = decode_response(Op.GET, answer)
    assert isinstance(response, GetResponse)
    return {key for key, record in zip(keys, response.records, strict=True) if record is not None}


def test_node_killed_and_restarted_at_once_gets_its_keys_back(make_cluster, ca):
    # Restarted before anyone noticed it was gone, the node raises no member event and so no
    # rebalance: its empty cache must ask for its share, or every key it held keeps one copy less.
    nodes = make_cluster(["k0", "k1", "k2"])
    caches = [Cache(n, replicas=3, remote_timeout=0.5) for n in nodes]
    peers = [[n.node_id, *n.address] for n in nodes]
    child, (host, port) = _spawn(ca, "k9", peers)
    try:
        for node in nodes:
            node.add_peer("k9", host, port)
        assert child.stdout.readline().strip() == "ready"
        caches[0].create_bucket("kept")
        keys = {f"r{i}": i for i in range(200)}
        caches[1].put_many("kept", keys)
        placement = Placement(["k0", "k1", "k2", "k9"])
        share = {k for k in keys if "k9" in placement.replicas("kept", k, 3)}
        assert len(share) > 100
        assert wait_for(lambda: _held_by(caches[0], "k9", "kept", list(keys)) == share, timeout=20)

        os.kill(child.pid, signal.SIGKILL)
        reap_child(child)
        child, _ = _spawn(ca, "k9", peers, port=port)
        assert child.stdout.readline().strip() == "ready"
        assert wait_for(lambda: _held_by(caches[0], "k9", "kept", list(keys)) == share, timeout=30)
        assert sum(c.stats().get("handback_keys", 0) for c in caches) >= len(share)
    finally:
        reap_child(child)
        for cache in caches:
            cache.close(handoff=False)

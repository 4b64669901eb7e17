"""Shared fixtures: a cluster CA, clusters of real nodes on 127.0.0.1, leak checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nodosum import Node, NodeConfig
from nodosum.certs import create_ca


@pytest.fixture(scope="session")
def ca() -> tuple[bytes, bytes]:
    return create_ca()


@pytest.fixture(scope="session")
def other_ca() -> tuple[bytes, bytes]:
    return create_ca("another cluster")


def start_node(ca: tuple[bytes, bytes], node_id: str, **settings: object) -> Node:
    settings.setdefault("profile", "local")
    settings.setdefault("port", 0)
    settings.setdefault("membership", "static")
    return Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id=node_id, **settings)).start()


def connect_all(nodes: list[Node], timeout: float = 20.0) -> None:
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.add_peer(other.node_id, *other.address)
    for node in nodes:
        node.ready(timeout)


@pytest.fixture
def make_cluster(ca: tuple[bytes, bytes]) -> Iterator[Callable[..., list[Node]]]:
    """make_cluster(["a", "b"], **settings) -> started, fully connected nodes; shut down after the test."""
    made: list[Node] = []

    def make(ids: list[str], **settings: object) -> list[Node]:
        nodes = [start_node(ca, node_id, **settings) for node_id in ids]
        made.extend(nodes)
        connect_all(nodes)
        return nodes

    yield make
    for node in made:
        node.shutdown()


@pytest.fixture
def cluster3(make_cluster: Callable[..., list[Node]]) -> list[Node]:
    return make_cluster(["a", "b", "c"])


def connection_to(node: Node, peer_id: str):
    """The QUIC connection ``node`` uses for ``peer_id`` now (None: not connected)."""
    return node._loop_thread.call(node._messaging.connections.table.adopted, peer_id)


def node_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("nodosum-", "mycel-"))]


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def spawn_child(script: str, spec: dict) -> tuple[subprocess.Popen, tuple[str, int]]:
    """Run a node script of tests/ in a child process with its JSON ``spec`` on stdin;
    returns it and the address it printed (it prints "ready" next, once joined)."""
    child = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), script)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    child.stdin.write(json.dumps(spec) + "\n")  # type: ignore[union-attr]
    child.stdin.flush()  # type: ignore[union-attr]
    host, port = child.stdout.readline().split()  # type: ignore[union-attr]
    return child, (host, int(port))


def reap_child(child: subprocess.Popen) -> None:
    """Kill the child if it still runs, wait for it and close its pipes."""
    if child.poll() is None:
        child.kill()
    child.wait(10)
    child.stdin.close()  # type: ignore[union-attr]
    child.stdout.close()  # type: ignore[union-attr]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` passes; returns the last result's truth."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_leaked_node_threads() -> Iterator[None]:
    before = set(node_threads())
    yield

    def leaked() -> list[threading.Thread]:
        return [t for t in node_threads() if t not in before]

    assert wait_for(lambda: not leaked(), timeout=10), f"leaked threads: {leaked()}"

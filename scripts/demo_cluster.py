"""A local demo cluster: nodes on 127.0.0.1 join by gossip, exchange messages and
requests, and share a replicated cache.

    python scripts/demo_cluster.py [--nodes 3] [--base-port 0]

Each node runs in this process with its own event-loop thread; they share one
cluster CA made on the spot (the only secret: the gossip key travels in the
authenticated join). The script prints what each node sees.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from mycel import Cache
from nodosum import Node, NodeConfig, RemoteError
from nodosum.certs import create_ca


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (2-9)")
    parser.add_argument("--base-port", type=int, default=0, help="first UDP port (0: any free ports)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show nodosum's log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    count = max(2, min(args.nodes, 9))

    ca_cert, ca_key = create_ca("demo cluster")
    print(f"cluster CA created; starting {count} nodes")
    nodes: list[Node] = []
    for i in range(count):
        port = args.base_port + i if args.base_port else 0
        seeds = ["%s:%d" % nodes[0].address] if nodes else []  # every node joins through the first
        config = NodeConfig(ca_cert=ca_cert, ca_key=ca_key, node_id=f"node-{i + 1}", port=port, profile="local",
                            seeds=seeds)
        nodes.append(Node(config).start())
    try:
        for node in nodes:
            node.ready(timeout=15)
        deadline = time.monotonic() + 15
        while any(len(n.member_ids()) < count for n in nodes) and time.monotonic() < deadline:
            time.sleep(0.05)
        for node in nodes:
            print(f"{node.node_id} listening on {node.address[0]}:{node.address[1]}, members {node.member_ids()}")

        lock = threading.Lock()
        inbox_done = threading.Event()
        received = 0

        def on_message(payload: bytes, sender: str, me: str) -> None:
            nonlocal received
            with lock:
                print(f"  {me} got message {payload.decode()!r} from {sender}")
                received += 1
                if received == count - 1:
                    inbox_done.set()

        def on_request(payload: bytes, sender: str, me: str) -> bytes:
            if payload == b"fail":
                raise ValueError("asked to fail")
            return f"{me} says hello to {sender} ({payload.decode()})".encode()

        apps = {}
        for node in nodes:
            app = apps[node.node_id] = node.register_application("demo")
            app.set_receive_handler(lambda p, s, me=node.node_id: on_message(p, s, me))
            app.set_request_handler(lambda p, s, me=node.node_id: on_request(p, s, me))

        first = nodes[0].node_id
        print(f"\n{first} broadcasts a message:")
        apps[first].send(b"hello, cluster")
        inbox_done.wait(10)

        print("\nrequests between every pair:")
        for src in nodes:
            for dst in nodes:
                if src is not dst:
                    start = time.perf_counter()
                    reply = apps[src.node_id].request(b"ping", dst.node_id)
                    took = (time.perf_counter() - start) * 1e6
                    print(f"  {src.node_id} -> {dst.node_id}: {reply.decode()!r} in {took:.0f} µs")

        print("\na request whose handler raises:")
        try:
            apps[first].request(b"fail", nodes[1].node_id)
        except RemoteError as exc:
            print(f"  RemoteError: {exc.remote_message}")

        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            apps[first].request(b"x" * 100, nodes[1].node_id)
        rate = n / (time.perf_counter() - start)
        print(f"\n{n} sequential 100-byte requests {first} -> {nodes[1].node_id}: {rate:,.0f} requests/s")

        print("\na replicated cache on the same nodes (replicas=2):")
        caches = [Cache(node, replicas=2) for node in nodes]
        caches[0].create_bucket("demo", ttl=60)
        caches[0].put("demo", "greeting", {"text": "hello from " + first})
        for cache in caches:
            print(f"  {cache.node_id} reads {cache.get('demo', 'greeting')}")
        caches[-1].add("demo", "visits", 0)  # only if absent
        caches[-1].incr("demo", "visits")
        print(f"  visits counter after one incr: {caches[0].get('demo', 'visits')}")
        events: list[str] = []
        nodes[0].on_member_event(lambda e: events.append(f"{e.kind.value} {e.member.node_id}"))
        leaving = nodes.pop()
        caches.pop().close()  # hands its keys to the others first
        leaving.shutdown()  # announces a graceful leave
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"\n{leaving.node_id} left; {first} saw: {events}; members now {nodes[0].member_ids()}")
        print(f"  {nodes[0].node_id} still reads {caches[0].get('demo', 'greeting')}")
        for cache in caches:
            cache.close()
    finally:
        for node in nodes:
            node.shutdown()
    print("all nodes shut down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

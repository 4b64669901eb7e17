"""A cache node in its own process, for kill -9 tests: prints its address, then serves.

stdin: a JSON line {"ca": [cert, key], "node_id": ..., "peers": [[id, host, port], ...], "replicas": n,
                    "port": n (optional)}
stdout: "host port" once the node runs, then "ready" once connected. Exits when stdin closes.
"""

import json
import sys

from mycel import Cache
from nodosum import Node, NodeConfig


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    cert, key = (s.encode() for s in spec["ca"])
    node = Node(NodeConfig(ca_cert=cert, ca_key=key, node_id=spec["node_id"], port=spec.get("port", 0),
                           profile="local",
                           membership="static")).start()
    print(*node.address, flush=True)
    for peer_id, host, port in spec["peers"]:
        node.add_peer(peer_id, host, port)
    node.ready(20)
    Cache(node, replicas=spec["replicas"], remote_timeout=0.5)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or kills us)


if __name__ == "__main__":
    main()

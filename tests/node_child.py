"""A gossip node (optionally with a cache) in its own process, for kill -9 tests.

stdin: one JSON line {"ca": [cert, key], "node_id": ..., "seeds": ["host:port"], "swim": {...},
                      "cache": bool, "replicas": n, "host": ..., "port": n or "first-last", "echo": bool,
                      "members_file": path}
stdout: "host port" once listening, then "ready" once joined. Exits when stdin closes.
With "members_file", the node does not wait to join: it writes its sorted member ids there
(as JSON, replaced atomically) at start and after every member event.
"""

import json
import os
import sys

from mycel import Cache
from nodosum import Node, NodeConfig


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    cert, key = (s.encode() for s in spec["ca"])
    node = Node(NodeConfig(ca_cert=cert, ca_key=key, node_id=spec["node_id"], host=spec.get("host", "127.0.0.1"),
                           port=spec.get("port", 0),
                           profile="local",
                           seeds=spec.get("seeds", []), swim=spec.get("swim", {}))).start()
    if spec.get("echo"):
        node.register_application("echo").set_request_handler(lambda payload, sender: payload)
    print(*node.address, flush=True)
    path = spec.get("members_file")
    if path:
        def report(_event: object = None) -> None:
            with open(path + ".tmp", "w") as out:
                json.dump(node.member_ids(), out)
            os.replace(path + ".tmp", path)

        node.on_member_event(report)
        report()
    else:
        node.ready(30)
    if spec.get("cache"):
        Cache(node, replicas=spec.get("replicas", 3), remote_timeout=0.5)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or kills us)


if __name__ == "__main__":
    main()

"""Nodes across a veth link into a network namespace, with packet loss made by nftables.

Runs only as root with `ip` and `nft` available (`.ci/run` installs nftables); otherwise skipped.
The namespace and its addresses exist only for the test and are removed afterwards.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time

import pytest

from nodosum import Node, NodeConfig

from .conftest import wait_for

CHILD = os.path.join(os.path.dirname(__file__), "node_child.py")
ROOT_ADDR, NS_ADDR = "10.213.77.1", "10.213.77.2"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
    reason="needs root, iproute2 and nftables",
)


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns():
    """A namespace joined to this one by a veth pair; yields its name."""
    name = f"nds{os.getpid() % 100000}"
    host_if, ns_if = f"{name}h", f"{name}n"
    try:
        run("ip", "netns", "add", name)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", name)
        run("ip", "addr", "add", f"{ROOT_ADDR}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "netns", "exec", name, "ip", "addr", "add", f"{NS_ADDR}/30", "dev", ns_if)
        run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"cannot make a network namespace here: {exc}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def drop_inbound(ns: str, percent: int) -> None:
    """Drop ``percent`` % of the UDP packets arriving in the namespace (input side, as loss)."""
    rules = ("table inet loss {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
             f"    meta l4proto udp numgen random mod 100 < {percent} counter drop\n  }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules.encode(), check=True,
                   capture_output=True, timeout=20)


def dropped(ns: str) -> int:
    """Packets the loss rule has dropped so far."""
    listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "loss", "input"],
                             check=True, capture_output=True, text=True, timeout=20).stdout
    return int(re.search(r"counter packets (\d+)", listing).group(1))


def spawn(ca, ns: str, spec: dict) -> tuple[subprocess.Popen, tuple[str, int]]:
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    child.stdin.write(json.dumps({"ca": [ca[0].decode(), ca[1].decode()], **spec}) + "\n")
    child.stdin.flush()
    host, port = child.stdout.readline().split()
    return child, (host, int(port))


def reap(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(10)
    child.stdin.close()
    child.stdout.close()


def test_requests_and_membership_survive_ten_percent_loss(ca, netns):
    here = Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id="here", host=ROOT_ADDR, port=0,
                           profile="local")).start()
    child, (host, port) = spawn(ca, netns, {"node_id": "there", "host": NS_ADDR, "echo": True,
                                            "seeds": ["%s:%d" % here.address]})
    try:
        assert child.stdout.readline().strip() == "ready"
        here.ready(20)
        assert wait_for(lambda: here.member_ids() == ["here", "there"], timeout=20)
        events = []
        here.on_member_event(events.append)
        app = here.register_application("echo")
        assert app.request(b"before", "there") == b"before"
        drop_inbound(netns, 10)
        start = time.monotonic()
        for i in range(300):  # every request is answered: QUIC retransmits what the network drops
            payload = f"request {i}".encode() * 20
            assert app.request(payload, "there", timeout=10) == payload
        big = os.urandom(2 * 1024 * 1024)  # hundreds of packets: retransmission under a congestion window
        assert app.request(big, "there", timeout=30) == big
        # several probe rounds under loss (local profile: 1 s) with no false failure
        while time.monotonic() - start < 8:
            assert app.request(b"still", "there", timeout=10) == b"still"
        assert [e for e in events if e.kind.value in ("fail", "leave")] == []
        assert here.member_ids() == ["here", "there"]
        assert dropped(netns) >= 20  # the loss really happened
    finally:
        reap(child)
        here.shutdown()

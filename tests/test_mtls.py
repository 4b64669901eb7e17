"""Mutual TLS is enforced by nodosum: impostors are refused before any application sees a byte."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from nodosum import NodeUnreachable, RequestTimeout
from nodosum.certs import issue_node_certificate
from nodosum.transport.frames import encode_data, encode_request_frame, encode_stream_init
from nodosum.transport.quic import ALPN

from .conftest import start_node, wait_for


def watch(nodes, app_id="secret"):
    """Register an application on each node that records everything it is handed."""
    seen: list[tuple[str, bytes, str]] = []
    for node in nodes:
        app = node.register_application(app_id)
        app.set_receive_handler(lambda p, s, me=node.node_id: seen.append((me, p, s)))
        app.set_request_handler(lambda p, s, me=node.node_id: seen.append((me, p, s)) or b"answered")
    return seen


async def _raw_client(address, cert_pem: bytes | None, key_pem: bytes | None, stream_bytes: bytes) -> str:
    """Connect with a bare aioquic client, write ``stream_bytes`` on a stream, report what happened."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    if cert_pem is not None:
        config.certificate = x509.load_pem_x509_certificate(cert_pem)
        config.private_key = load_pem_private_key(key_pem, None)
    try:
        async with connect(address[0], address[1], configuration=config, wait_connected=True) as client:
            reader, writer = await client.create_stream()
            writer.write(stream_bytes)
            try:
                data = await asyncio.wait_for(reader.read(1000), timeout=3)
            except asyncio.TimeoutError:
                return "no answer"
            except ConnectionError:
                return "closed"
            return "answered" if data else "closed"
    except ConnectionError:
        return "refused"


def _intrusion(node_id: str) -> bytes:
    return encode_stream_init(node_id, "secret", "default") + encode_data(b"intrusion") + encode_request_frame(1, b"q")


def test_node_of_another_ca_is_refused_both_ways(ca, other_ca):
    a = start_node(ca, "a")
    b = start_node(ca, "b")
    rogue = start_node(other_ca, "rogue")
    try:
        seen = watch([a, b, rogue])
        a.add_peer("b", *b.address)
        b.add_peer("a", *a.address)
        a.ready(10)
        # the rogue dials a, and a dials the rogue (connections open on first use)
        rogue.add_peer("a", *a.address)
        a.add_peer("rogue", *rogue.address)
        with pytest.raises((NodeUnreachable, RequestTimeout)):
            rogue.application("secret").request(b"steal", "a", timeout=3)
        with pytest.raises((NodeUnreachable, RequestTimeout)):
            a.application("secret").request(b"hello?", "rogue", timeout=3)
        # each refused the other's certificate (the dialler checks first and closes)
        assert wait_for(lambda: a.stats().get("peers_rejected", 0) >= 1, timeout=15)
        assert wait_for(lambda: rogue.stats().get("peers_rejected", 0) >= 1, timeout=15)
        assert [s for s in seen if "rogue" in (s[0], s[2])] == []
        # the honest pair still works
        assert a.application("secret").request(b"hi", "b") == b"answered"
    finally:
        for node in (a, b, rogue):
            node.shutdown()


@pytest.mark.parametrize("who", ["no certificate", "another CA", "id claim mismatch"])
def test_raw_clients_are_refused(ca, other_ca, who):
    a = start_node(ca, "a")
    try:
        seen = watch([a])
        if who == "no certificate":
            cert, key, claim = None, None, "a2"
        elif who == "another CA":
            cert, key = issue_node_certificate(*other_ca, "mallory")
            claim = "mallory"
        else:
            cert, key = issue_node_certificate(*ca, "mallory")  # genuine, but claims another id
            claim = "b"
        outcome = asyncio.run(_raw_client(a.address, cert, key, _intrusion(claim)))
        assert outcome in ("refused", "closed", "no answer")
        assert wait_for(lambda: a.stats().get("peers_rejected", 0) >= 1)
        assert seen == []
    finally:
        a.shutdown()


def test_genuine_raw_client_is_served(ca):
    """The same raw client, with a certificate whose id matches its claim, is answered:
    proves the refusals above come from the checks, not from the client."""
    a = start_node(ca, "a")
    try:
        seen = watch([a])
        cert, key = issue_node_certificate(*ca, "mallory")
        outcome = asyncio.run(_raw_client(a.address, cert, key, _intrusion("mallory")))
        assert outcome == "answered"
        assert wait_for(lambda: len(seen) == 2)
        assert sorted(seen) == [("a", b"intrusion", "mallory"), ("a", b"q", "mallory")]
    finally:
        a.shutdown()


def test_dialled_node_presenting_another_id_is_refused(ca):
    a = start_node(ca, "a")
    impostor = start_node(ca, "mallory")
    try:
        seen = watch([a, impostor])
        # a believes node "b" lives at the impostor's address
        a.add_peer("b", *impostor.address)
        with pytest.raises((NodeUnreachable, RequestTimeout)):
            a.application("secret").request(b"x", "b", timeout=3)
        assert a.stats().get("peers_rejected", 0) >= 1
        assert seen == []
    finally:
        a.shutdown()
        impostor.shutdown()

"""ACKs ride on data packets: a request/response exchange costs one datagram each way, not an extra ACK-only one.

Sans-I/O: two aioquic connections configured as the endpoint configures them, fed each other's datagrams
with a fake clock.
"""

from __future__ import annotations

import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from nodosum.certs import ClusterIdentity
from nodosum.transport.quic import ALPN, piggyback_ack

ADDR = ("127.0.0.1", 4433)


def _config(identity: ClusterIdentity, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN], certificate=identity.certificate,
                             private_key=identity.private_key, verify_mode=ssl.CERT_NONE)


def _deliver(sender: QuicConnection, receiver: QuicConnection, now: float) -> int:
    datagrams = sender.datagrams_to_send(now)
    for data, _ in datagrams:
        receiver.receive_datagram(data, ADDR, now)
    while receiver.next_event() is not None:
        pass
    return len(datagrams)


@pytest.fixture
def pair(ca):
    client = QuicConnection(configuration=_config(ClusterIdentity.from_config("a", *ca), True))
    server = QuicConnection(configuration=_config(ClusterIdentity.from_config("b", *ca), False),
                            original_destination_connection_id=client.original_destination_connection_id)
    now = 10.0
    client.connect(ADDR, now)
    for _ in range(6):  # handshake, and the ACKs of its last flights
        now += 0.01
        _deliver(client, server, now)
        _deliver(server, client, now)
    for conn in (client, server):
        conn.handle_timer(now + 1.0)
    now += 1.0
    _deliver(client, server, now)
    _deliver(server, client, now)
    return client, server, now


def _exchanges(client: QuicConnection, server: QuicConnection, now: float, piggyback: bool,
               rounds: int = 20) -> tuple[int, int]:
    """Sequential request/response exchanges 200 µs apart; returns the datagrams each side sent,
    the ones its ACK timer sent included."""
    stream_id = client.get_next_available_stream_id()
    sent = {"client": 0, "server": 0}
    for _ in range(rounds):
        for name, sender, receiver in (("client", client, server), ("server", server, client)):
            now += 0.0002
            for conn, who in ((client, "client"), (server, "server")):  # timers that fell due meanwhile
                timer = conn.get_timer()
                if timer is not None and timer <= now:
                    conn.handle_timer(now)
                    sent[who] += _deliver(conn, client if conn is server else server, now)
            sender.send_stream_data(stream_id, b"x" * 100)
            if piggyback:
                piggyback_ack(sender, now)
            sent[name] += _deliver(sender, receiver, now)
    return sent["client"], sent["server"]


def test_exchanges_send_one_datagram_each_way_with_the_ack_piggybacked(pair):
    client, server, now = pair
    assert _exchanges(client, server, now, piggyback=True) == (20, 20)


def test_without_piggyback_aioquic_adds_ack_only_datagrams(pair):
    # The control: aioquic's delayed ACK sends extra packets in this same exchange pattern.
    client, server, now = pair
    sent_client, sent_server = _exchanges(client, server, now, piggyback=False)
    assert sent_client > 20 and sent_server > 20


def test_piggyback_leaves_an_ack_that_is_not_pending_alone(pair):
    client, _, now = pair
    piggyback_ack(client, now)  # nothing received since the last ACK: no ACK is made due
    assert client.datagrams_to_send(now) == []

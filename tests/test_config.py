"""NodeConfig and Node construction refuse bad settings with a ConfigError naming the field."""

from __future__ import annotations

import socket

import pytest

from nodosum import ConfigError, Node, NodeConfig
from nodosum.certs import create_ca

from .conftest import start_node


@pytest.mark.parametrize(
    "field,value",
    [
        ("node_id", "has space"),
        ("node_id", ""),
        ("port", 70000),
        ("port", -1),
        ("profile", "wan-ish"),
        ("request_timeout", 0),
        ("max_frame_size", 10),
        ("handler_threads", 0),
        ("idle_timeout", -1.0),
        ("peers", ["no-at-sign"]),
        ("peers", ["x@host:notaport"]),
    ],
)
def test_bad_values_name_their_field(ca, field, value):
    with pytest.raises(ConfigError) as info:
        NodeConfig(ca_cert=ca[0], ca_key=ca[1], **{field: value})
    assert info.value.field == field


def test_ca_cert_is_required():
    with pytest.raises(ConfigError) as info:
        NodeConfig()
    assert info.value.field == "ca_cert"


def test_bad_pem_fails_at_construction(ca):
    with pytest.raises(ConfigError) as info:
        Node(NodeConfig(ca_cert=b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", ca_key=ca[1]))
    assert info.value.field == "ca_cert"
    other_cert, other_key = create_ca("other")
    with pytest.raises(ConfigError) as info:
        Node(NodeConfig(ca_cert=ca[0], ca_key=other_key))
    assert info.value.field == "ca_key"


def test_port_in_use_fails_at_start(ca):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        node = Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id="busy", port=port))
        with pytest.raises(ConfigError) as info:
            node.start()
        assert info.value.field == "port"


def test_profiles_fill_timings_and_overrides_win(ca):
    local = NodeConfig(ca_cert=ca[0], ca_key=ca[1], profile="local")
    lan = local.replace(profile="lan")
    assert local.idle_timeout < lan.idle_timeout
    custom = NodeConfig(ca_cert=ca[0], ca_key=ca[1], profile="local", idle_timeout=3.5)
    assert custom.idle_timeout == 3.5
    assert NodeConfig(ca_cert=ca[0], ca_key=ca[1], peers=["b@127.0.0.1:7001"]).peers[0].port == 7001


def test_node_with_its_own_certificate(ca):
    from nodosum.certs import issue_node_certificate

    cert, key = issue_node_certificate(*ca, "own-cert")
    node = Node(NodeConfig(ca_cert=ca[0], cert=cert, key=key, node_id="own-cert", port=0,
                           membership="static")).start()
    try:
        peer = start_node(ca, "issuer")
        try:
            from .conftest import connect_all

            connect_all([node, peer])
            peer.register_application("e").set_request_handler(lambda p, s: s.encode())
            assert node.register_application("e").request(b"", "issuer") == b"own-cert"
        finally:
            peer.shutdown()
    finally:
        node.shutdown()

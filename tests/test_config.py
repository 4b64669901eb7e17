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
    assert local.resolve().timing.idle_timeout < lan.resolve().timing.idle_timeout
    custom = NodeConfig(ca_cert=ca[0], ca_key=ca[1], profile="local", idle_timeout=3.5)
    assert custom.resolve().timing.idle_timeout == 3.5
    assert custom.replace(profile="lan").resolve().timing.idle_timeout == 3.5  # set explicitly: kept
    assert NodeConfig(ca_cert=ca[0], ca_key=ca[1], peers=["b@127.0.0.1:7001"]).resolve().peers[0].port == 7001


def test_fields_keep_the_types_the_user_gave(ca):
    config = NodeConfig(ca_cert=ca[0], ca_key=ca[1], port="7946-7949", seeds=["10.0.0.1", "10.0.0.2:8000-8001"],
                        gossip_keys=["A" * 43 + "="])
    assert config.port == "7946-7949" and config.seeds == ["10.0.0.1", "10.0.0.2:8000-8001"]
    assert config.idle_timeout is None and config.membership is None and config.gossip_keys == ["A" * 43 + "="]
    resolved = config.resolve()
    assert resolved.ports == (7946, 7949)
    assert resolved.seeds == (("10.0.0.1", 7946), ("10.0.0.1", 7947), ("10.0.0.1", 7948), ("10.0.0.1", 7949),
                              ("10.0.0.2", 8000), ("10.0.0.2", 8001))
    assert resolved.membership == "gossip" and resolved.gossip_keys == (bytes(32),)
    assert resolved.timing.connection_idle_timeout < resolved.timing.idle_timeout


@pytest.mark.parametrize("port,expected", [(7000, (7000, 7000)), ("7000", (7000, 7000)), ("7000-7015", (7000, 7015)),
                                           ((7000, 7001), (7000, 7001)), (0, (0, 0))])
def test_port_forms(ca, port, expected):
    assert NodeConfig(ca_cert=ca[0], ca_key=ca[1], port=port).resolve().ports == expected


@pytest.mark.parametrize("field,value", [
    ("port", "7010-7000"), ("port", "70-"), ("port", (1, 70000)), ("port", "1-5000"), ("port", True),
    ("seeds", ["host:port"]), ("seeds", "10.0.0.1:7946"), ("seeds", [("h", "7946")]),
    ("advertise", "0.0.0.0"), ("advertise", "::"), ("meta", {"nodosum.apps": ["x"]}),
])
def test_bad_deployment_settings_name_their_field(ca, field, value):
    with pytest.raises(ConfigError) as info:
        NodeConfig(ca_cert=ca[0], ca_key=ca[1], **{field: value})
    assert info.value.field == field


def test_host_only_seed_needs_a_port(ca):
    with pytest.raises(ConfigError) as info:
        NodeConfig(ca_cert=ca[0], ca_key=ca[1], port=0, seeds=["10.0.0.1"])
    assert info.value.field == "seeds" and "no port" in str(info.value)


def test_node_takes_the_first_free_port_of_its_range(ca):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        first = taken.getsockname()[1]
        free = []
        for port in range(first + 1, first + 4):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    break
                free.append(port)
        if len(free) < 3:
            pytest.skip("no three free ports after a taken one")
        node = Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id="ranged", port=f"{first}-{first + 3}",
                               membership="static")).start()
        try:
            assert node.address == ("127.0.0.1", first + 1)
            assert node.advertised_address == node.address
        finally:
            node.shutdown()
        with pytest.raises(ConfigError) as info:
            Node(NodeConfig(ca_cert=ca[0], ca_key=ca[1], node_id="busy", port=first, membership="static")).start()
        assert info.value.field == "port"


def test_advertised_address_is_detected_for_a_wildcard_host():
    from nodosum.binding import advertised_host, is_self

    assert advertised_host("127.0.0.1", None, []) == "127.0.0.1"
    assert advertised_host("0.0.0.0", "10.1.2.3", []) == "10.1.2.3"
    # bound everywhere: the interface that routes to the first seed (here: loopback)
    assert advertised_host("0.0.0.0", None, [("127.0.0.1", 7946)]) == "127.0.0.1"
    detected = advertised_host("0.0.0.0", None, [])  # the primary address
    assert detected not in ("0.0.0.0", "")
    assert is_self(("127.0.0.1", 7946), ("127.0.0.1", 7946), "127.0.0.1")
    assert is_self(("localhost", 7946), ("0.0.0.0", 7946), "10.1.2.3")
    assert is_self(("10.1.2.3", 7946), ("0.0.0.0", 7946), "10.1.2.3")
    assert not is_self(("127.0.0.1", 7947), ("127.0.0.1", 7946), "127.0.0.1")
    assert not is_self(("10.9.9.9", 7946), ("0.0.0.0", 7946), "10.1.2.3")


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

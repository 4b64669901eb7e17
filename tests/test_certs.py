"""Tests for nodosum.certs: CA, node certificates, ClusterIdentity and the CLI."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodosum.certs import (
    NODE_ID_URI_PREFIX,
    ClusterIdentity,
    create_ca,
    issue_node_certificate,
    load_pem,
    main,
    node_id_of,
)
from nodosum.errors import ConfigError, PeerRejected

REPO = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca()


@pytest.fixture(scope="module")
def other_ca() -> tuple[bytes, bytes]:
    # Same common name as the real CA on purpose: only the signature tells them apart.
    return create_ca()


@pytest.fixture(scope="module")
def rsa_ca() -> tuple[bytes, bytes]:
    return create_ca("rsa CA", key_type="rsa")


@pytest.fixture(scope="module")
def identity(ca: tuple[bytes, bytes]) -> ClusterIdentity:
    return ClusterIdentity.from_config("node-a", ca[0], ca_key=ca[1])


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _manual_cert(
    ca_pem: bytes,
    ca_key_pem: bytes,
    *,
    node_ids: list[str] = ["node-x"],  # noqa: B006 - never mutated
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[bytes, bytes]:
    """A node certificate built by hand, to get validity windows and SANs the library refuses to make."""
    ca_cert = _cert(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_ids[0] if node_ids else "x")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if node_ids:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(NODE_ID_URI_PREFIX + n) for n in node_ids]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# ---------------------------------------------------------------------------------------------- CA and issuing


@pytest.mark.parametrize("key_type, key_class", [("ec", ec.EllipticCurvePrivateKey), ("rsa", rsa.RSAPrivateKey)])
def test_create_ca(key_type: str, key_class: type, ca: tuple[bytes, bytes], rsa_ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = ca if key_type == "ec" else rsa_ca
    cert = _cert(cert_pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, key_class)
    if key_type == "ec":
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    else:
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048


def test_create_ca_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError) as info:
        create_ca(key_type="dsa")
    assert info.value.field == "key_type"
    with pytest.raises(ConfigError) as info:
        create_ca(valid_days=0)
    assert info.value.field == "valid_days"


def test_issued_node_certificate(ca: tuple[bytes, bytes]) -> None:
    before = dt.datetime.now(UTC)
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "node-1.eu_west", valid_seconds=3600)
    cert = _cert(cert_pem)
    ca_cert = _cert(ca[0])
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-1.eu_west"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["nodosum://node/node-1.eu_west"]
    assert node_id_of(cert) == "node-1.eu_west"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    skew = before - cert.not_valid_before_utc
    assert dt.timedelta(minutes=4) < skew <= dt.timedelta(minutes=5, seconds=1)
    assert abs((cert.not_valid_after_utc - before).total_seconds() - 3600) < 5
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("bad", ["", "a" * 129, "node a", "node/a", "nöde", "a:b"])
def test_issue_rejects_bad_node_id(ca: tuple[bytes, bytes], bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        issue_node_certificate(ca[0], ca[1], bad)
    assert info.value.field == "node_id"


def test_issue_accepts_longest_node_id(ca: tuple[bytes, bytes]) -> None:
    node_id = "a" * 64 + "b" * 64
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], node_id)
    cert = _cert(cert_pem)
    assert node_id_of(cert) == node_id
    # A CN holds at most 64 characters; the SAN carries the full id.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a" * 64
    assert ClusterIdentity.from_config(node_id, ca[0], cert=cert_pem, key=key_pem).node_id == node_id


def test_rsa_ca_issues_verifiable_node_certs(rsa_ca: tuple[bytes, bytes]) -> None:
    issuing = ClusterIdentity.from_config("r1", rsa_ca[0], ca_key=rsa_ca[1])
    cert_pem, key_pem = issue_node_certificate(rsa_ca[0], rsa_ca[1], "r2")
    other = ClusterIdentity.from_config("r2", rsa_ca[0], cert=cert_pem, key=key_pem)
    assert issuing.verify_peer(other.certificate) == "r2"
    assert other.verify_peer(issuing.certificate, expected_node_id="r1") == "r1"


def test_node_id_of_requires_exactly_one_id(ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(UTC)
    window = {"not_before": now - dt.timedelta(hours=1), "not_after": now + dt.timedelta(hours=1)}
    none_pem, _ = _manual_cert(*ca, node_ids=[], **window)
    two_pem, _ = _manual_cert(*ca, node_ids=["a", "b"], **window)
    with pytest.raises(PeerRejected):
        node_id_of(_cert(none_pem))
    with pytest.raises(PeerRejected, match="2 node ids"):
        node_id_of(_cert(two_pem))


# ---------------------------------------------------------------------------------------------- load_pem


def test_load_pem_content_and_file(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    assert load_pem(ca[0], "ca_cert") == ca[0]
    assert load_pem(ca[0].decode(), "ca_cert") == ca[0]
    path = tmp_path / "ca.pem"
    path.write_bytes(ca[0])
    assert load_pem(path, "ca_cert") == ca[0]
    assert load_pem(str(path), "ca_cert") == ca[0]
    assert load_pem(os.fsencode(path), "ca_cert") == ca[0]


def test_load_pem_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file") as info:
        load_pem(tmp_path / "nope.pem", "key")
    assert info.value.field == "key"


# ---------------------------------------------------------------------------------------------- from_config


def test_from_config_with_ca_key_issues(identity: ClusterIdentity, ca: tuple[bytes, bytes]) -> None:
    assert identity.node_id == "node-a"
    assert node_id_of(identity.certificate) == "node-a"
    assert identity.ca_pem == ca[0]
    assert identity.ca_certificate == _cert(ca[0])
    identity.certificate.verify_directly_issued_by(identity.ca_certificate)
    assert _cert(identity.certificate_pem) == identity.certificate
    assert identity.private_key.public_key() == identity.certificate.public_key()
    assert identity.not_valid_after.tzinfo is not None
    remaining = identity.not_valid_after - dt.datetime.now(UTC)
    assert dt.timedelta(days=6, hours=23) < remaining <= dt.timedelta(days=7)


def test_from_config_valid_seconds(ca: tuple[bytes, bytes]) -> None:
    ident = ClusterIdentity.from_config("short", ca[0], ca[1], valid_seconds=600)
    remaining = (ident.not_valid_after - dt.datetime.now(UTC)).total_seconds()
    assert 590 < remaining <= 600


def test_from_config_with_cert_and_key(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "node-b")
    (tmp_path / "ca.pem").write_bytes(ca[0])
    (tmp_path / "b.pem").write_bytes(cert_pem)
    (tmp_path / "b.key").write_bytes(key_pem)
    # ca_key is ignored when cert and key are given, even if it is garbage.
    ident = ClusterIdentity.from_config(
        "node-b", tmp_path / "ca.pem", ca_key=b"-----BEGIN junk", cert=tmp_path / "b.pem", key=str(tmp_path / "b.key")
    )
    assert ident.node_id == "node-b"
    assert ident.certificate_pem == cert_pem
    assert ident.private_key_pem == key_pem


def _field(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        ClusterIdentity.from_config(**kwargs)  # type: ignore[arg-type]
    return info.value.field


def test_from_config_needs_cert_and_key_or_ca_key(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "n")
    assert _field(node_id="n", ca_cert=ca[0]) == "cert"
    assert _field(node_id="n", ca_cert=ca[0], cert=cert_pem) == "key"
    assert _field(node_id="n", ca_cert=ca[0], key=key_pem) == "cert"
    assert _field(node_id="n", ca_cert=ca[0], ca_key=ca[1], cert=cert_pem) == "key"


def test_from_config_key_not_matching_cert(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_node_certificate(ca[0], ca[1], "n")
    _, other_key = issue_node_certificate(ca[0], ca[1], "n")
    assert _field(node_id="n", ca_cert=ca[0], cert=cert_pem, key=other_key) == "key"


def test_from_config_ca_key_not_matching_ca(ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes]) -> None:
    assert _field(node_id="n", ca_cert=ca[0], ca_key=other_ca[1]) == "ca_key"


def test_from_config_ca_cert_that_is_not_a_ca(ca: tuple[bytes, bytes]) -> None:
    node_cert, node_key = issue_node_certificate(ca[0], ca[1], "n")
    assert _field(node_id="n", ca_cert=node_cert, ca_key=node_key) == "ca_cert"
    assert _field(node_id="n", ca_cert=node_cert, cert=node_cert, key=node_key) == "ca_cert"


def test_from_config_ca_cert_as_node_cert(ca: tuple[bytes, bytes]) -> None:
    assert _field(node_id="n", ca_cert=ca[0], cert=ca[0], key=ca[1]) == "cert"


def test_from_config_expired_and_future_cert(ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(UTC)
    expired = _manual_cert(*ca, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1))
    future = _manual_cert(*ca, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=2))
    with pytest.raises(ConfigError, match="expired") as info:
        ClusterIdentity.from_config("node-x", ca[0], cert=expired[0], key=expired[1])
    assert info.value.field == "cert"
    with pytest.raises(ConfigError, match="not valid before") as info:
        ClusterIdentity.from_config("node-x", ca[0], cert=future[0], key=future[1])
    assert info.value.field == "cert"


def test_from_config_cert_from_another_ca(ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_node_certificate(other_ca[0], other_ca[1], "n")
    assert _field(node_id="n", ca_cert=ca[0], cert=cert_pem, key=key_pem) == "cert"
    # The same files are fine against their own CA.
    assert ClusterIdentity.from_config("n", other_ca[0], cert=cert_pem, key=key_pem).node_id == "n"


def test_from_config_node_id_mismatch(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "alice")
    with pytest.raises(ConfigError, match="alice") as info:
        ClusterIdentity.from_config("bob", ca[0], cert=cert_pem, key=key_pem)
    assert info.value.field == "node_id"


def test_from_config_cert_without_node_id(ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(UTC)
    cert_pem, key_pem = _manual_cert(
        *ca, node_ids=[], not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(hours=1)
    )
    assert _field(node_id="x", ca_cert=ca[0], cert=cert_pem, key=key_pem) == "cert"


def test_from_config_invalid_node_id(ca: tuple[bytes, bytes]) -> None:
    assert _field(node_id="no spaces", ca_cert=ca[0], ca_key=ca[1]) == "node_id"


@pytest.mark.parametrize("field", ["ca_cert", "ca_key", "cert", "key"])
def test_from_config_garbage_pem(ca: tuple[bytes, bytes], field: str) -> None:
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "n")
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    good = {"ca_cert": ca[0], "ca_key": ca[1], "cert": cert_pem, "key": key_pem}
    if field == "ca_key":
        del good["cert"], good["key"]
    good[field] = garbage
    assert _field(node_id="n", **good) == field


@pytest.mark.parametrize("field", ["ca_cert", "ca_key", "cert", "key"])
def test_from_config_missing_file(tmp_path: Path, ca: tuple[bytes, bytes], field: str) -> None:
    cert_pem, key_pem = issue_node_certificate(ca[0], ca[1], "n")
    good: dict[str, object] = {"ca_cert": ca[0], "ca_key": ca[1], "cert": cert_pem, "key": key_pem}
    if field == "ca_key":
        del good["cert"], good["key"]
    good[field] = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match="cannot read file") as info:
        ClusterIdentity.from_config("n", **good)  # type: ignore[arg-type]
    assert info.value.field == field


# ---------------------------------------------------------------------------------------------- verify_peer


def test_verify_peer_accepts_good_peer(identity: ClusterIdentity, ca: tuple[bytes, bytes]) -> None:
    peer = ClusterIdentity.from_config("node-b", ca[0], ca[1])
    assert identity.verify_peer(peer.certificate) == "node-b"
    assert identity.verify_peer(peer.certificate, [peer.certificate], expected_node_id="node-b") == "node-b"
    assert peer.verify_peer(identity.certificate) == "node-a"


def test_verify_peer_rejects_none(identity: ClusterIdentity) -> None:
    with pytest.raises(PeerRejected, match="no certificate"):
        identity.verify_peer(None)


def test_verify_peer_rejects_other_ca(identity: ClusterIdentity, other_ca: tuple[bytes, bytes]) -> None:
    rogue = ClusterIdentity.from_config("node-a", other_ca[0], other_ca[1])
    with pytest.raises(PeerRejected, match="not issued by the cluster CA"):
        identity.verify_peer(rogue.certificate, [rogue.ca_certificate], expected_node_id="node-a")
    with pytest.raises(PeerRejected, match="not issued by the cluster CA"):
        identity.verify_peer(rogue.ca_certificate)


def test_verify_peer_rejects_ca_certificate(identity: ClusterIdentity) -> None:
    with pytest.raises(PeerRejected, match="CA certificate"):
        identity.verify_peer(identity.ca_certificate)


def test_verify_peer_rejects_expired_and_future(identity: ClusterIdentity, ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(UTC)
    expired, _ = _manual_cert(*ca, not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(seconds=1))
    future, _ = _manual_cert(*ca, not_before=now + dt.timedelta(hours=1), not_after=now + dt.timedelta(days=1))
    with pytest.raises(PeerRejected, match="expired"):
        identity.verify_peer(_cert(expired))
    with pytest.raises(PeerRejected, match="not valid before"):
        identity.verify_peer(_cert(future))
    # The same certificate is accepted inside its validity window.
    assert identity.verify_peer(_cert(expired), now=now - dt.timedelta(days=1)) == "node-x"


def test_verify_peer_rejects_expected_id_mismatch(identity: ClusterIdentity, ca: tuple[bytes, bytes]) -> None:
    peer = ClusterIdentity.from_config("node-b", ca[0], ca[1])
    with pytest.raises(PeerRejected, match="expected 'node-c'"):
        identity.verify_peer(peer.certificate, expected_node_id="node-c")


def test_verify_peer_rejects_missing_node_id(identity: ClusterIdentity, ca: tuple[bytes, bytes]) -> None:
    now = dt.datetime.now(UTC)
    cert_pem, _ = _manual_cert(*ca, node_ids=[], not_before=now, not_after=now + dt.timedelta(hours=1))
    with pytest.raises(PeerRejected, match="node id"):
        identity.verify_peer(_cert(cert_pem))


# ---------------------------------------------------------------------------------------------- CLI


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, node_dir = tmp_path / "ca", tmp_path / "nodes" / "deep"
    assert main(["create-ca", "--out", str(ca_dir), "--cn", "test CA", "--days", "30"]) == 0
    assert _mode(ca_dir / "ca.key") == 0o600
    ca_cert = _cert((ca_dir / "ca.pem").read_bytes())
    assert ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert (ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc).days == 30
    assert main(["issue", "--ca", str(ca_dir), "--node-id", "n1", "--out", str(node_dir), "--days", "2"]) == 0
    assert _mode(node_dir / "n1.key") == 0o600
    assert "n1.pem" in capsys.readouterr().out
    ident = ClusterIdentity.from_config(
        "n1", ca_dir / "ca.pem", cert=node_dir / "n1.pem", key=node_dir / "n1.key"
    )
    remaining = ident.not_valid_after - dt.datetime.now(UTC)
    assert dt.timedelta(days=1, hours=23) < remaining <= dt.timedelta(days=2)
    # Refuses to overwrite without --force, and reports errors with status 2.
    assert main(["create-ca", "--out", str(ca_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["create-ca", "--out", str(ca_dir), "--force"]) == 0
    assert _cert((ca_dir / "ca.pem").read_bytes()) != ca_cert
    assert main(["issue", "--ca", str(tmp_path / "nowhere"), "--node-id", "n2", "--out", str(node_dir)]) == 2
    assert "cannot read file" in capsys.readouterr().err
    assert main(["issue", "--ca", str(ca_dir), "--node-id", "bad id", "--out", str(node_dir)]) == 2
    assert "node_id" in capsys.readouterr().err


def test_cli_subprocess_rsa(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nodosum.certs", "create-ca", "--out", str(tmp_path), "--rsa"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "ca.key" in run.stdout
    assert _mode(tmp_path / "ca.key") == 0o600
    key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert main(["issue", "--ca", str(tmp_path), "--node-id", "r.1", "--out", str(tmp_path)]) == 0
    ident = ClusterIdentity.from_config("r.1", tmp_path / "ca.pem", tmp_path / "ca.key")
    assert ident.verify_peer(_cert((tmp_path / "r.1.pem").read_bytes()), expected_node_id="r.1") == "r.1"

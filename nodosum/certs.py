"""Cluster identity: the cluster CA, node certificates and peer verification.

A cluster is defined by its CA. A node runs with the CA certificate and either the CA key (it then issues
itself a short-lived node certificate) or its own certificate and key signed by the CA. The node id is written
into the certificate as a URI subject alternative name ``nodosum://node/<id>``.

Also a small CLI::

    python -m nodosum.certs create-ca --out DIR [--cn NAME] [--days N] [--rsa]
    python -m nodosum.certs issue --ca DIR --node-id ID --out DIR [--days N]
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateError, ConfigError, PeerRejected

logger = logging.getLogger(__name__)

__all__ = [
    "NODE_ID_URI_PREFIX",
    "ClusterIdentity",
    "create_ca",
    "issue_node_certificate",
    "load_pem",
    "main",
    "node_id_of",
]

NODE_ID_URI_PREFIX = "nodosum://node/"
DEFAULT_NODE_VALID_SECONDS = 7 * 24 * 3600.0
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_NODE_ID_LENGTH = 128
MAX_COMMON_NAME_LENGTH = 64
_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]+")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _check_node_id(node_id: object) -> str:
    """Return ``node_id`` if valid, else raise ConfigError("node_id")."""
    if not isinstance(node_id, str) or not node_id:
        raise ConfigError("node_id", "must be a non-empty string")
    if len(node_id) > MAX_NODE_ID_LENGTH:
        raise ConfigError("node_id", f"must be at most {MAX_NODE_ID_LENGTH} characters")
    if not _NODE_ID_RE.fullmatch(node_id):
        raise ConfigError("node_id", f"{node_id!r} may only contain the characters A-Z a-z 0-9 . _ -")
    return node_id


# ---------------------------------------------------------------------------------------------- PEM helpers


def load_pem(value: bytes | str | os.PathLike[str], field: str) -> bytes:
    """Return PEM bytes: ``value`` itself if it is PEM content, else the content of the file it names."""
    if isinstance(value, bytes) and value.lstrip().startswith(b"-----BEGIN"):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode("ascii", errors="replace")
    if not isinstance(value, (bytes, str, os.PathLike)):
        raise ConfigError(field, f"expected PEM content or a file path, got {type(value).__name__}")
    path = os.fsdecode(value)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (OSError, ValueError) as exc:
        raise ConfigError(field, f"cannot read file {path!r}: {exc}") from None


def _parse_certificate(pem: bytes, field: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(field, f"not a valid PEM certificate: {exc}") from None


def _parse_private_key(pem: bytes, field: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(field, f"not a valid unencrypted PEM private key: {exc}") from None


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    try:
        return _public_der(key.public_key()) == _public_der(cert.public_key())
    except (ValueError, TypeError, AttributeError, UnsupportedAlgorithm):
        return False


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _signing_hash(key: object) -> hashes.SHA256 | None:
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return hashes.SHA256()
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    raise CertificateError(f"unsupported CA key type {type(key).__name__}")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _validity_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"expired at {cert.not_valid_after_utc.isoformat()}"
    return None


# ---------------------------------------------------------------------------------------------- issuing


def create_ca(
    common_name: str = "nodosum cluster CA", *, valid_days: int = 3650, key_type: str = "ec"
) -> tuple[bytes, bytes]:
    """Create a self-signed cluster CA; return ``(ca_cert_pem, ca_key_pem)``."""
    if valid_days <= 0:
        raise ConfigError("valid_days", "must be positive")
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ConfigError("key_type", f"must be 'ec' or 'rsa', got {key_type!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    logger.info("created cluster CA %r (%s, %d days)", common_name, key_type, valid_days)
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _issue(
    ca: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes, node_id: str, valid_seconds: float
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if valid_seconds <= 0:
        raise ConfigError("valid_seconds", "must be positive")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # Never outlive the CA: peers would refuse the chain anyway.
    not_after = min(now + dt.timedelta(seconds=valid_seconds), ca.not_valid_after_utc)
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    # X.509 caps a CN at 64 characters; the URI SAN (what node_id_of reads) carries the full id.
    common_name = node_id[:MAX_COMMON_NAME_LENGTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(NODE_ID_URI_PREFIX + node_id)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, _signing_hash(ca_key))
    )
    logger.debug("issued node certificate for %r valid until %s", node_id, not_after.isoformat())
    return cert, key


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes | None) -> tuple[x509.Certificate, PrivateKeyTypes | None]:
    ca = _parse_certificate(ca_cert_pem, "ca_cert")
    if not _is_ca(ca):
        raise ConfigError("ca_cert", "is not a CA certificate (needs BasicConstraints ca=True)")
    if ca_key_pem is None:
        return ca, None
    ca_key = _parse_private_key(ca_key_pem, "ca_key")
    if not _key_matches(ca_key, ca):
        raise ConfigError("ca_key", "does not match the public key of ca_cert")
    return ca, ca_key


def _as_issuer_key(key: PrivateKeyTypes) -> CertificateIssuerPrivateKeyTypes:
    _signing_hash(key)  # raises CertificateError for key types that cannot sign certificates
    return key  # type: ignore[return-value]


def issue_node_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    node_id: str,
    *,
    valid_seconds: float = DEFAULT_NODE_VALID_SECONDS,
) -> tuple[bytes, bytes]:
    """Issue a node certificate (new ECDSA P-256 key) for ``node_id``; return ``(cert_pem, key_pem)``."""
    _check_node_id(node_id)
    ca, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    assert ca_key is not None
    cert, key = _issue(ca, _as_issuer_key(ca_key), node_id, valid_seconds)
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def node_id_of(cert: x509.Certificate) -> str:
    """Return the node id in ``cert``'s ``nodosum://node/`` URI SAN; raise PeerRejected if absent or ambiguous."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PeerRejected("certificate has no subject alternative name with a node id") from None
    ids = [
        uri[len(NODE_ID_URI_PREFIX) :]
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(NODE_ID_URI_PREFIX)
    ]
    if not ids:
        raise PeerRejected(f"certificate has no {NODE_ID_URI_PREFIX} URI with a node id")
    if len(ids) > 1:
        raise PeerRejected(f"certificate carries {len(ids)} node ids: {ids!r}")
    try:
        return _check_node_id(ids[0])
    except ConfigError as exc:
        raise PeerRejected(f"certificate carries an invalid node id: {exc}") from None


# ---------------------------------------------------------------------------------------------- identity


class ClusterIdentity:
    """The identity a node runs with: cluster CA, own certificate and key. Build with :meth:`from_config`."""

    __slots__ = ("_node_id", "_ca", "_ca_pem", "_cert", "_key")

    def __init__(
        self,
        node_id: str,
        ca_certificate: x509.Certificate,
        certificate: x509.Certificate,
        private_key: PrivateKeyTypes,
    ) -> None:
        """Internal: no validation here; use :meth:`from_config`."""
        self._node_id = node_id
        self._ca = ca_certificate
        self._ca_pem = ca_certificate.public_bytes(serialization.Encoding.PEM)
        self._cert = certificate
        self._key = private_key

    @classmethod
    def from_config(
        cls,
        node_id: str,
        ca_cert: bytes | str | os.PathLike[str],
        ca_key: bytes | str | os.PathLike[str] | None = None,
        cert: bytes | str | os.PathLike[str] | None = None,
        key: bytes | str | os.PathLike[str] | None = None,
        *,
        valid_seconds: float = DEFAULT_NODE_VALID_SECONDS,
    ) -> ClusterIdentity:
        """Load and check the identity; with ``cert`` and ``key`` use them, else issue one with ``ca_key``.

        Every problem raises :class:`ConfigError` naming the offending field.
        """
        _check_node_id(node_id)
        if (cert is None) != (key is None):
            missing = "key" if key is None else "cert"
            raise ConfigError(missing, "cert and key must be given together")
        if cert is None and ca_key is None:
            raise ConfigError("cert", "give either cert and key, or ca_key to issue one")
        use_own = cert is not None and key is not None
        ca, ca_private = _load_ca(
            load_pem(ca_cert, "ca_cert"), None if use_own or ca_key is None else load_pem(ca_key, "ca_key")
        )
        now = _now()
        problem = _validity_problem(ca, now)
        if problem:
            raise ConfigError("ca_cert", f"CA certificate is {problem}")

        certificate: x509.Certificate
        private_key: PrivateKeyTypes
        if cert is not None and key is not None:
            certificate = _parse_certificate(load_pem(cert, "cert"), "cert")
            private_key = _parse_private_key(load_pem(key, "key"), "key")
        else:
            assert ca_private is not None
            try:
                issuer_key = _as_issuer_key(ca_private)
            except CertificateError as exc:
                raise ConfigError("ca_key", str(exc)) from None
            certificate, private_key = _issue(ca, issuer_key, node_id, valid_seconds)

        if not _key_matches(private_key, certificate):
            raise ConfigError("key", "does not match the public key of cert")
        if _is_ca(certificate):
            raise ConfigError("cert", "is a CA certificate, not a node certificate")
        if not _issued_by(certificate, ca):
            raise ConfigError("cert", "was not issued (signed) by the cluster CA in ca_cert")
        problem = _validity_problem(certificate, now)
        if problem:
            raise ConfigError("cert", f"certificate is {problem}")
        try:
            cert_node_id = node_id_of(certificate)
        except PeerRejected as exc:
            raise ConfigError("cert", str(exc)) from None
        if cert_node_id != node_id:
            raise ConfigError("node_id", f"{node_id!r} differs from the certificate's node id {cert_node_id!r}")
        identity = cls(node_id, ca, certificate, private_key)
        logger.info(
            "node %r identity ready (%s certificate, valid until %s)",
            node_id,
            "configured" if use_own else "self-issued",
            identity.not_valid_after.isoformat(),
        )
        return identity

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._node_id

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The cluster CA certificate."""
        return self._ca

    @property
    def ca_pem(self) -> bytes:
        """The cluster CA certificate, PEM."""
        return self._ca_pem

    @property
    def certificate(self) -> x509.Certificate:
        """This node's certificate."""
        return self._cert

    @property
    def certificate_pem(self) -> bytes:
        """This node's certificate, PEM."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key(self) -> PrivateKeyTypes:
        """This node's private key (a cryptography key object)."""
        return self._key

    @property
    def private_key_pem(self) -> bytes:
        """This node's private key, unencrypted PKCS8 PEM."""
        return _key_pem(self._key)

    @property
    def not_valid_after(self) -> dt.datetime:
        """When this node's certificate expires (UTC)."""
        return self._cert.not_valid_after_utc

    def verify_peer(
        self,
        certificate: x509.Certificate | None,
        chain: Sequence[x509.Certificate] = (),
        expected_node_id: str | None = None,
        *,
        now: dt.datetime | None = None,
    ) -> str:
        """Return the peer's node id if its certificate is a valid node certificate of our CA.

        ``chain`` (intermediates the peer sent) is ignored: node certificates must be issued directly by the
        cluster CA. Raises :class:`PeerRejected` otherwise.
        """
        del chain
        if certificate is None:
            raise PeerRejected("peer presented no certificate")
        if not _issued_by(certificate, self._ca):
            raise PeerRejected(
                f"peer certificate ({certificate.subject.rfc4514_string()}) was not issued by the cluster CA"
            )
        if _is_ca(certificate) or certificate == self._ca:
            raise PeerRejected("peer presented a CA certificate, not a node certificate")
        problem = _validity_problem(certificate, now or _now())
        if problem:
            raise PeerRejected(f"peer certificate is {problem}")
        peer_id = node_id_of(certificate)
        if expected_node_id is not None and peer_id != expected_node_id:
            raise PeerRejected(f"peer certificate is for node {peer_id!r}, expected {expected_node_id!r}")
        return peer_id

    def __repr__(self) -> str:
        return f"ClusterIdentity(node_id={self._node_id!r}, not_valid_after={self.not_valid_after.isoformat()})"


def main(argv: list[str] | None = None) -> int:
    """``python -m nodosum.certs``: see :mod:`nodosum.cli.certs`."""
    from .cli.certs import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())

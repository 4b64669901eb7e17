"""The certificate command line: ``python -m nodosum.certs create-ca | issue``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ..certs import ClusterIdentity, create_ca
from ..errors import CertificateError, ConfigError


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` atomically; private files get mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nodosum.certs", description="nodosum cluster certificates")
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("create-ca", help="create a cluster CA: DIR/ca.pem and DIR/ca.key")
    ca.add_argument("--out", required=True, type=Path, help="output directory (created)")
    ca.add_argument("--cn", default="nodosum cluster CA", help="CA common name")
    ca.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    ca.add_argument("--rsa", action="store_true", help="RSA 2048 instead of ECDSA P-256")
    ca.add_argument("--force", action="store_true", help="overwrite existing files")
    issue = sub.add_parser("issue", help="issue a node certificate: DIR/<ID>.pem and DIR/<ID>.key")
    issue.add_argument("--ca", required=True, type=Path, help="directory with ca.pem and ca.key")
    issue.add_argument("--node-id", required=True, help="node id ([A-Za-z0-9._-], at most 128 characters)")
    issue.add_argument("--out", required=True, type=Path, help="output directory (created)")
    issue.add_argument("--days", type=float, default=7, help="validity in days (default 7)")
    issue.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the certificate CLI; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "create-ca":
            cert_pem, key_pem = create_ca(args.cn, valid_days=args.days, key_type="rsa" if args.rsa else "ec")
            cert_path, key_path = args.out / "ca.pem", args.out / "ca.key"
        else:
            identity = ClusterIdentity.from_config(
                args.node_id,
                args.ca / "ca.pem",
                args.ca / "ca.key",
                valid_seconds=args.days * 24 * 3600,
            )
            cert_pem, key_pem = identity.certificate_pem, identity.private_key_pem
            cert_path, key_path = args.out / f"{args.node_id}.pem", args.out / f"{args.node_id}.key"
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (cert_path, key_path):
            if path.exists() and not args.force:
                raise ConfigError("out", f"{path} already exists (use --force to overwrite)")
        _write(cert_path, cert_pem, private=False)
        _write(key_path, key_pem, private=True)
    except (ConfigError, CertificateError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {cert_path}")
    print(f"wrote {key_path}")
    return 0

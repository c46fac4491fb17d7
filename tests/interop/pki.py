"""A test PKI: a CA, a server certificate for localhost, and client certificate
directories in libnbd's layout (``client-cert.pem``, ``client-key.pem``, ``ca-cert.pem``)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    name_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    subject: x509.Name | None = None,
    san: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = subject if subject is not None else x509.Name([cn(name_cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH
            if server
            else (x509.ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    elif san is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=not name)
    return b.sign(issuer_key, hashes.SHA256())


def cn(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


class PKI:
    """A CA, a server certificate, and per-identity client directories in libnbd's layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key = _key()
        self.ca = _cert("loft test CA", self.ca_key, None, self.ca_key, ca=True)
        (root / "ca-cert.pem").write_bytes(_pem(self.ca))
        skey = _key()
        (root / "server-cert.pem").write_bytes(
            _pem(_cert("localhost", skey, self.ca.subject, self.ca_key, server=True))
        )
        (root / "server-key.pem").write_bytes(_pem_key(skey))

    def client_dir(
        self,
        cn: str,
        *,
        signed_by_ca: bool = True,
        subject: x509.Name | None = None,
        san: str | None = None,
    ) -> Path:
        """A client's certificate directory (named ``cn``); ``subject`` replaces the
        subject ``CN=cn``."""
        d = self.root / cn
        d.mkdir(mode=0o700)
        key = _key()
        if signed_by_ca:
            cert = _cert(cn, key, self.ca.subject, self.ca_key, subject=subject, san=san)
        else:
            other = _key()
            cert = _cert(
                cn, key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")]), other
            )
        (d / "client-cert.pem").write_bytes(_pem(cert))
        (d / "client-key.pem").write_bytes(_pem_key(key))
        (d / "ca-cert.pem").write_bytes(_pem(self.ca))
        return d

    def server_args(self) -> list[str]:
        """``loft disk serve-file`` options for this server certificate and CA."""
        return [
            "--tls-cert",
            str(self.root / "server-cert.pem"),
            "--tls-key",
            str(self.root / "server-key.pem"),
            "--tls-ca",
            str(self.root / "ca-cert.pem"),
        ]

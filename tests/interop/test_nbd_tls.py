"""TLS over TCP: client certificates, per-identity authorization, nothing without TLS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nbdtool import DEBIAN_PYTHON, NBDServerProcess, make_image, run

pytestmark = pytest.mark.timeout(120)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    cn: str,
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
    name = subject if subject is not None else x509.Name([_cn(cn)])
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


def _cn(value: str) -> x509.NameAttribute:
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


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[NBDServerProcess, PKI, int]]:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir(mode=0o700)
    pki = PKI(pki_dir)
    authz = tmp_path / "authz.json"
    authz.write_text(json.dumps({"clients": {"alice": ["alice-disk", "alice-disk@*"]}}))
    images = {
        "alice-disk": make_image(tmp_path / "a.img", 8 << 20, b"alice"),
        "alice-disk@snap": make_image(tmp_path / "as.img", 8 << 20),
        "bob-disk": make_image(tmp_path / "b.img", 8 << 20, b"bob"),
    }
    extra = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki_dir / "server-cert.pem"),
        "--tls-key",
        str(pki_dir / "server-key.pem"),
        "--tls-ca",
        str(pki_dir / "ca-cert.pem"),
        "--authz",
        str(authz),
    ]
    with NBDServerProcess(tmp_path, images, extra=extra) as server:
        deadline = time.monotonic() + 20
        while not (m := re.search(r"listening on 127\.0\.0\.1:(\d+)", server.log.read_text())):
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
        yield server, pki, int(m.group(1))


def _uri(port: int, export: str, certs: Path) -> str:
    return f"nbds://127.0.0.1:{port}/{export}?tls-certificates={certs}"


def test_authorized_client_sees_and_uses_only_its_exports(
    tls_server: tuple[NBDServerProcess, PKI, int],
) -> None:
    _, pki, port = tls_server
    alice = pki.client_dir("alice")
    uri = _uri(port, "alice-disk", alice)
    assert run(["nbdinfo", "--is", "tls", uri], check=False).returncode == 0
    info = json.loads(run(["nbdinfo", "--json", uri]).stdout)
    assert info["TLS"] is True and info["exports"][0]["export-size"] == 8 << 20
    listed = json.loads(run(["nbdinfo", "--json", "--list", _uri(port, "", alice)]).stdout)
    assert {e["export-name"] for e in listed["exports"]} == {"alice-disk", "alice-disk@snap"}
    script = (
        "h = nbd.NBD()\nh.set_uri_allow_local_file(True)\n"
        f"h.connect_uri({_uri(port, 'alice-disk', alice)!r})\n"
        "h.pwrite(b'tls!' * 1024, 4096)\nh.flush()\nprint(bytes(h.pread(4, 4096)))"
    )
    out = run([DEBIAN_PYTHON, "-m", "nbd", "-c", script]).stdout
    assert out.strip() == "b'tls!'"
    # Another tenant's export is refused exactly like one that does not exist.
    bob = run(["nbdinfo", _uri(port, "bob-disk", alice)], check=False)
    missing = run(["nbdinfo", _uri(port, "no-such-disk", alice)], check=False)
    assert bob.returncode != 0 and missing.returncode != 0
    assert bob.stderr.replace("bob-disk", "X") == missing.stderr.replace("no-such-disk", "X")


def test_unauthorized_identity_sees_nothing(tls_server: tuple[NBDServerProcess, PKI, int]) -> None:
    _, pki, port = tls_server
    mallory = pki.client_dir("mallory")
    listed = json.loads(run(["nbdinfo", "--json", "--list", _uri(port, "", mallory)]).stdout)
    assert listed["exports"] == []
    assert run(["nbdinfo", _uri(port, "alice-disk", mallory)], check=False).returncode != 0


def test_no_tls_or_untrusted_certificate_is_refused(
    tls_server: tuple[NBDServerProcess, PKI, int],
) -> None:
    server, pki, port = tls_server
    plain = run(["nbdinfo", f"nbd://127.0.0.1:{port}/alice-disk"], check=False)
    assert plain.returncode != 0
    rogue = pki.client_dir("alice2", signed_by_ca=False)
    assert run(["nbdinfo", _uri(port, "alice-disk", rogue)], check=False).returncode != 0
    # The server survived all of that and still serves the Unix socket.
    assert server.alive
    assert run(["nbdinfo", "--size", server.uri("bob-disk")]).stdout.strip() == str(8 << 20)


#: Certificates that name no single identity: no CN at all, or several.
NO_IDENTITY = {
    "organisation-only": (
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "alice")]),
        None,
    ),
    "san-only": (x509.Name([]), "alice"),
    "cn-twice": (x509.Name([_cn("mallory"), _cn("alice")]), None),
    "cn-twice-reversed": (x509.Name([_cn("alice"), _cn("mallory")]), None),
    "cn-twice-in-one-rdn": (
        x509.Name([x509.RelativeDistinguishedName([_cn("alice"), _cn("mallory")])]),
        None,
    ),
}


@pytest.mark.parametrize("kind", sorted(NO_IDENTITY))
def test_certificate_without_one_identity_gets_nothing(
    tls_server: tuple[NBDServerProcess, PKI, int], kind: str
) -> None:
    """Trust comes from the listener: on TCP, a verified certificate that names no single
    identity (no commonName, or several) sees no export and opens none, read or write."""
    server, pki, port = tls_server
    subject, san = NO_IDENTITY[kind]
    certs = pki.client_dir(kind, subject=subject, san=san)
    listed = json.loads(run(["nbdinfo", "--json", "--list", _uri(port, "", certs)]).stdout)
    assert listed["exports"] == []
    for export in ("alice-disk", "alice-disk@snap", "bob-disk"):
        assert run(["nbdinfo", _uri(port, export, certs)], check=False).returncode != 0
    assert server.alive

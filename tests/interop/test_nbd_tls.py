"""TLS over TCP: client certificates, per-identity authorization, nothing without TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from nbdtool import DEBIAN_PYTHON, NBDServerProcess, make_image, run
from pki import PKI, cn

pytestmark = pytest.mark.timeout(120)


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
    extra = ["--listen", "127.0.0.1:0", *pki.server_args(), "--authz", str(authz)]
    with NBDServerProcess(tmp_path, images, extra=extra) as server:
        yield server, pki, server.tcp_port()


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
    "cn-twice": (x509.Name([cn("mallory"), cn("alice")]), None),
    "cn-twice-reversed": (x509.Name([cn("alice"), cn("mallory")]), None),
    "cn-twice-in-one-rdn": (
        x509.Name([x509.RelativeDistinguishedName([cn("alice"), cn("mallory")])]),
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

"""CA hash links: the host's openssl in the jail, deterministic numbering, duplicates once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loft.envstore.certs import ca_hash_links
from loft.envstore.environment import CA_SHARE, ca_bundle_layer, ca_certificates

pytestmark = pytest.mark.timeout(60)


def self_signed(dest: Path, subject: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(dest.with_suffix(".key")), "-out", str(dest),
         "-subj", subject, "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    dest.with_suffix(".key").unlink()
    return dest


def subject_hash(cert: Path) -> str:
    r = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
                       check=True, capture_output=True, text=True)  # fmt: skip
    return r.stdout.strip()


def test_links_like_c_rehash(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    base = pkg / CA_SHARE
    # Two roots with one subject (so one hash), a byte-identical copy, another subject,
    # and a file that is no certificate.
    b = self_signed(base / "mozilla/B_Root.crt", "/CN=loft test root/O=loft")
    a = self_signed(base / "mozilla/A_Root.crt", "/CN=loft test root/O=loft")
    (base / "extra").mkdir()
    copy = base / "extra/Z_copy_of_A.crt"
    copy.write_bytes(a.read_bytes())
    other = self_signed(base / "extra/Other.crt", "/CN=another root")
    (base / "mozilla/Broken.crt").write_text("not a certificate\n")
    certs = ca_certificates(pkg)
    assert certs == ["extra/Other.crt", "extra/Z_copy_of_A.crt", "mozilla/A_Root.crt",
                     "mozilla/B_Root.crt", "mozilla/Broken.crt"]  # fmt: skip
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    links = ca_hash_links(base, certs, scratch)
    h, o = subject_hash(a), subject_hash(other)
    assert subject_hash(b) == h != o
    # Same hash: numbered in name order; the identical copy is linked once (under the
    # first name); the broken file not at all.
    assert links == {f"{h}.0": "extra/Z_copy_of_A.crt", f"{h}.1": "mozilla/B_Root.crt",
                     f"{o}.0": "extra/Other.crt"}  # fmt: skip
    layer = ca_bundle_layer(pkg, links)
    assert layer.links[f"etc/ssl/certs/{o}.0"] == "/usr/share/ca-certificates/extra/Other.crt"
    assert set(layer.files) == {"etc/ssl/certs/ca-certificates.crt"}


def test_a_symlinked_certificate_is_not_followed_out_of_the_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / CA_SHARE / "mozilla").mkdir(parents=True)
    secret = tmp_path / "host-secret.crt"
    secret.write_text("host file\n")
    (pkg / CA_SHARE / "mozilla/evil.crt").symlink_to(secret)
    assert ca_certificates(pkg) == []
    assert b"host file" not in ca_bundle_layer(pkg).files["etc/ssl/certs/ca-certificates.crt"]


def test_no_certificates_no_jail(tmp_path: Path) -> None:
    assert ca_hash_links(tmp_path, [], tmp_path) == {}

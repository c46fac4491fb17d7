"""Fetching an artefact: HTTP(S) only (redirects too), bounded by its declared size, and
no error repeats a hash of what a URL served."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from envbuild_support import loft
from hostile_support import Route, Server, entries, lock_of, npm_pin, npm_tarball, serve
from test_lock_format import URLS

from loft.envstore import build
from loft.envstore.build import build_lock
from loft.envstore.fetch import FetchError, HashMismatch, download, verify_file
from loft.envstore.lock import Lock, dumps
from loft.envstore.store import Store

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        yield s


@pytest.mark.parametrize("url", URLS)
def test_download_refuses_non_http_before_any_io(tmp_path: Path, url: str) -> None:
    dest = tmp_path / "dl"
    with pytest.raises(FetchError, match="URL"):
        download(url, dest, "npm package x 1")
    assert not dest.exists()


def test_download_accepts_an_uppercase_scheme(tmp_path: Path, server: Server) -> None:
    url = server.add("a.tgz", b"data")
    download(url.replace("http://", "HTTP://"), tmp_path / "dl", "x")
    assert (tmp_path / "dl").read_bytes() == b"data"


@pytest.mark.parametrize(
    "location", ["file:///etc/shadow", "ftp://127.0.0.1/x", "data:,secret", "gopher://h/"]
)
def test_download_redirect_out_of_http_refused(
    tmp_path: Path, server: Server, location: str
) -> None:
    url = server.add("moved.tgz", Route(status=302, location=location))
    with pytest.raises(FetchError, match="redirects elsewhere"):
        download(url, tmp_path / "dl", "x")
    assert entries(tmp_path) == []


def test_download_follows_a_redirect_to_http(tmp_path: Path, server: Server) -> None:
    target = server.add("real.tgz", b"data")
    url = server.add("moved.tgz", Route(status=301, location=target))
    download(url, tmp_path / "dl", "x")
    assert (tmp_path / "dl").read_bytes() == b"data"


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "no-length"])
def test_download_stops_at_the_declared_size(
    tmp_path: Path, server: Server, announce: bool
) -> None:
    # 256 MiB offered, 100 KiB declared: refused on the header, or after 100 KiB + 1 byte.
    url = server.add("big.tgz", Route(b"x" * MiB, repeat=256, announce=announce))
    with pytest.raises(FetchError, match="more than the 102400 bytes it may have"):
        download(url, tmp_path / "dl", "npm package x 1", max_bytes=100 << 10)
    assert entries(tmp_path) == []  # the partial file is gone
    # stopped early (socket buffers aside); refused on the header, the server may not
    # have started the body yet
    assert server.sent.get("/big.tgz", 0) < 64 * MiB


def test_download_of_exactly_the_declared_size(tmp_path: Path, server: Server) -> None:
    url = server.add("ok.tgz", Route(b"y" * 1000, announce=False))
    download(url, tmp_path / "dl", "x", max_bytes=1000)
    assert (tmp_path / "dl").stat().st_size == 1000


def _hash_prefixes(data: bytes) -> list[str]:
    """Every way an error could leak a hash of ``data``: hex and base64 prefixes."""
    out = []
    for algo in ("sha256", "sha512", "sha1"):
        d = hashlib.new(algo, data).digest()
        out += [d.hex()[:8], base64.b64encode(d).decode()[:8], d.hex()[-8:]]
    return out


@pytest.mark.parametrize("pin", ["sha256", "integrity"])
def test_hash_mismatch_names_no_hash_of_what_was_served(tmp_path: Path, pin: str) -> None:
    secret = tmp_path / "served"
    secret.write_bytes(b"root:$y$j9T$secret:19000:0:99999:7:::\n")
    kw = {"sha256": "0" * 64} if pin == "sha256" else {"integrity": "sha512-" + "A" * 86 + "=="}
    with pytest.raises(HashMismatch) as e:
        verify_file(secret, "Debian package x 1", **kw)
    assert not any(p in str(e.value) for p in _hash_prefixes(secret.read_bytes()))


# -- the same, end to end from a lock -------------------------------------------------------


@pytest.fixture
def one_npm(tmp_path: Path, server: Server) -> tuple[Lock, int]:
    """A lock of one npm tarball served by ``server`` (and how big the tarball is)."""
    tgz = npm_tarball({"index.js": b"x" * 1000})
    first = Store(tmp_path / "first", durable=False)
    return lock_of(first, [npm_pin(server, "a", "node_modules/a", tgz)]), len(tgz)


def test_build_lock_artefact_larger_than_its_lock_size_refused(
    tmp_path: Path, server: Server, one_npm: tuple[Lock, int]
) -> None:
    lock, size = one_npm
    assert lock.artefacts[0].size == size  # the lock records it
    server.add("a-1.0.0.tgz", Route(b"z" * MiB, repeat=64, announce=False))  # now it grows
    store = Store(tmp_path / "envstore", durable=False)
    with pytest.raises(FetchError, match=f"more than the {size} bytes"):
        build_lock(lock, store)
    assert store.all_paths() == [] and os.listdir(store.root / "tmp") == []
    assert server.sent["/a-1.0.0.tgz"] < 32 * MiB


def test_build_lock_without_sizes_is_bounded_by_the_cap(
    tmp_path: Path, server: Server, one_npm: tuple[Lock, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock, _ = one_npm
    old = replace(lock, artefacts=(replace(lock.artefacts[0], size=0),))  # an older lock
    monkeypatch.setattr(build, "MAX_ARTEFACT_SIZE", 4096)
    server.add("a-1.0.0.tgz", Route(b"z" * MiB, repeat=64, announce=False))
    store = Store(tmp_path / "envstore", durable=False)
    with pytest.raises(FetchError, match="more than the 4096 bytes"):
        build_lock(old, store)
    assert store.all_paths() == [] and os.listdir(store.root / "tmp") == []


def test_cli_build_of_a_file_url_lock_is_refused_before_reading(
    tmp_path: Path, one_npm: tuple[Lock, int]
) -> None:
    doc = json.loads(dumps(one_npm[0]))
    doc["artefacts"][0]["url"] = "file:///etc/shadow"
    (tmp_path / "p").mkdir()
    (tmp_path / "p/loft.lock").write_text(json.dumps(doc))
    r = loft(["env", "build"], tmp_path / "data", tmp_path / "p", timeout=60)
    assert r.returncode == 1
    assert re.match(r"loft: error: loft.lock: artefact 0: URL of a 1.0.0 'file:///etc/shadow' "
                    r"is not an http:// or https:// URL", r.stderr), r.stderr  # fmt: skip
    shadow = Path("/etc/shadow")
    if shadow.exists() and os.access(shadow, os.R_OK):
        assert not any(p in r.stderr for p in _hash_prefixes(shadow.read_bytes()))
    assert not (tmp_path / "data").exists()  # refused before the store was even opened

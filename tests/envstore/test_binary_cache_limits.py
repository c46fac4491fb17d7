"""A hostile binary cache cannot make `loft env pull` read more than a limit into memory:
narinfo and nix-cache-info have named limits, a NAR what its signed NarSize allows."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_support import Route, Server, serve

from loft.envstore.binary_cache import (
    CACHE_INFO_KEY,
    MAX_CACHE_INFO_SIZE,
    MAX_NARINFO_SIZE,
    cache_info_text,
    narinfo_key,
    pull,
    push,
)
from loft.envstore.bounded import TooLarge
from loft.envstore.fetch import FetchError
from loft.envstore.narinfo import parse_narinfo, render_narinfo
from loft.envstore.pathinfo import PathInfo
from loft.envstore.signing import SecretKey
from loft.envstore.store import Store

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
GHOST = "/nix/store/" + "a" * 32 + "-ghost"


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate("test-cache-1")


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        s.add(CACHE_INFO_KEY, cache_info_text().encode())
        yield s


def _pull_bounded(dst: Store, path: str, url: str, key: SecretKey) -> TooLarge:
    """Pull ``path``, expecting TooLarge; the memory the attempt took stays small."""
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge) as e:
            pull(dst, [path], url, [key.public()])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, peak
    assert dst.all_paths() == []
    return e.value


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "no-length"])
def test_pull_narinfo_over_the_limit_refused(
    tmp_path: Path, server: Server, key: SecretKey, announce: bool
) -> None:
    # A 400 MB "narinfo", read before any signature could be checked.
    line = b"References: " + b"x" * (MiB - 13) + b"\n"
    server.add(narinfo_key(GHOST), Route(line, repeat=400, announce=announce))
    err = _pull_bounded(Store(tmp_path / "dst", durable=False), GHOST, server.base, key)
    assert f"more than the {MAX_NARINFO_SIZE} bytes" in str(err)
    assert server.sent[f"/{narinfo_key(GHOST)}"] < 64 * MiB


def test_pull_cache_info_over_the_limit_refused(
    tmp_path: Path, server: Server, key: SecretKey
) -> None:
    server.add(CACHE_INFO_KEY, Route(b"StoreDir: /nix/store\n" * 4096, repeat=100, announce=False))
    err = _pull_bounded(Store(tmp_path / "dst", durable=False), GHOST, server.base, key)
    assert f"more than the {MAX_CACHE_INFO_SIZE} bytes" in str(err)


def test_pull_narinfo_over_the_limit_in_a_file_cache_refused(
    tmp_path: Path, key: SecretKey
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_INFO_KEY).write_text(cache_info_text())
    with (cache / narinfo_key(GHOST)).open("wb") as f:
        f.truncate(MAX_NARINFO_SIZE + 1)  # sparse: the size alone refuses it
    err = _pull_bounded(Store(tmp_path / "dst", durable=False), GHOST, f"file://{cache}", key)
    assert narinfo_key(GHOST) in str(err)


@pytest.fixture
def pushed(tmp_path: Path, key: SecretKey, server: Server) -> tuple[PathInfo, str, str]:
    """A path pushed to a cache that ``server`` serves: (info, narinfo text, NAR key)."""
    src = Store(tmp_path / "src", durable=False)
    with src.tmpdir() as t:
        (t / "tree").mkdir()
        (t / "tree/data").write_bytes(os.urandom(100_000))
        info = src.add_tree(t / "tree", "data")
    push(src, [info.path], f"file://{tmp_path / 'cache'}", key)
    text = (tmp_path / "cache" / narinfo_key(info.path)).read_text()
    ni = parse_narinfo(text)
    server.add(narinfo_key(info.path), text.encode())
    server.add(ni.url, (tmp_path / "cache" / ni.url).read_bytes())
    return info, text, ni.url


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "no-length"])
@pytest.mark.parametrize("file_size", [True, False], ids=["FileSize", "no-FileSize"])
def test_pull_nar_larger_than_declared_refused(
    tmp_path: Path,
    server: Server,
    key: SecretKey,
    pushed: tuple[PathInfo, str, str],
    announce: bool,
    file_size: bool,
) -> None:
    # The signature covers NarSize, not FileSize (nor the NAR's bytes until they are
    # hashed): the NAR is bounded by FileSize, and without one by what NarSize allows.
    info, text, nar = pushed
    if not file_size:
        ni = parse_narinfo(text)
        text = render_narinfo(dataclasses.replace(ni, file_size=None))
        server.add(narinfo_key(info.path), text.encode())
    server.add(nar, Route(b"\0" * MiB, repeat=400, announce=announce))
    err = _pull_bounded(Store(tmp_path / "dst", durable=False), info.path, server.base, key)
    assert nar in str(err)
    assert server.sent[f"/{nar}"] < 64 * MiB


def test_pull_within_the_limits_still_works(
    tmp_path: Path, server: Server, key: SecretKey, pushed: tuple[PathInfo, str, str]
) -> None:
    info, _, _ = pushed
    dst = Store(tmp_path / "dst", durable=False)
    assert pull(dst, [info.path], server.base, [key.public()]).fetched == [info.path]


def test_pull_redirect_out_of_http_refused(tmp_path: Path, server: Server, key: SecretKey) -> None:
    server.add(narinfo_key(GHOST), Route(status=302, location="ftp://127.0.0.1/x.narinfo"))
    with pytest.raises(FetchError, match="redirects elsewhere"):
        pull(Store(tmp_path / "dst", durable=False), [GHOST], server.base, [key.public()])

"""Binary cache push/pull between stores, on file://, memory:// and S3; trust and tamper."""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from loft.envstore import nar
from loft.envstore.binary_cache import (
    BinaryCacheError,
    cache_info_text,
    narinfo_key,
    pull,
    push,
    topo_levels,
)
from loft.envstore.narinfo import parse_narinfo, render_narinfo
from loft.envstore.pathinfo import HashMismatch, PathInfo
from loft.envstore.signing import SecretKey
from loft.envstore.store import Store
from loft.objstore import open_object_store

_n = itertools.count()


def add(store: Store, files: dict[str, bytes], name: str, refs: list[str] = ()) -> PathInfo:  # type: ignore[assignment]
    t = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp")) / "t"
    t.mkdir()
    for rel, data in files.items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_bytes(data)
    return store.add_tree(t, name, references_from=refs)


@pytest.fixture
def src(tmp_path: Path) -> tuple[Store, PathInfo, list[PathInfo]]:
    """A store with env -> {python, tool -> lib} (lib is shared)."""
    s = Store(tmp_path / "src", durable=False)
    lib = add(s, {"lib/libx.so": os.urandom(50_000)}, "libx")
    py = add(
        s,
        {"bin/python3": b"py " + lib.path.encode(), "lib/big": os.urandom(300_000)},
        "python3",
        [lib.path],
    )
    tool = add(s, {"bin/tool": b"tool " + lib.path.encode()}, "tool", [lib.path])
    env = add(
        s, {"bin/a": py.path.encode(), "bin/b": tool.path.encode()}, "env", [py.path, tool.path]
    )
    return s, env, [lib, py, tool, env]


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate("test-cache-1")


def test_push_pull_file_cache(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    url = f"file://{tmp_path / 'cache'}"
    r = push(store, [env.path], url, key)
    assert sorted(r.pushed) == sorted(p.path for p in paths) and r.already_present == []
    assert (tmp_path / "cache/nix-cache-info").read_text() == cache_info_text()
    again = push(store, [env.path], url, key)
    assert again.pushed == [] and len(again.already_present) == 4

    dst = Store(tmp_path / "dst", durable=False)
    pr = pull(dst, [env.path], url, [key.public()])
    assert sorted(pr.fetched) == sorted(p.path for p in paths)
    for p in paths:
        got = dst.query(p.path)
        assert got is not None and (got.nar_hash, got.nar_size, got.references) == (
            p.nar_hash,
            p.nar_size,
            p.references,
        )
        assert b"".join(nar.dump(dst.physical(p.path))) == b"".join(
            nar.dump(store.physical(p.path))
        )
    assert pull(dst, [env.path], url, [key.public()]).already_valid == [env.path]


def test_push_pull_memory_cache_partial_overlap(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    dst = Store(tmp_path / "dst", durable=False)
    lib = paths[0]
    pull(dst, [lib.path], url, [key.public()])
    pr = pull(dst, [env.path], url, [key.public()])
    assert lib.path not in pr.fetched and len(pr.fetched) == 3


@pytest.mark.s3
def test_push_pull_s3(
    s3_url: str, tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, _ = src
    push(store, [env.path], s3_url, key)
    dst = Store(tmp_path / "dst", durable=False)
    assert len(pull(dst, [env.path], s3_url, [key.public()]).fetched) == 4
    assert dst.closure([env.path]) == store.closure([env.path])


def test_pull_refuses_untrusted_signatures(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, _ = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    dst = Store(tmp_path / "dst", durable=False)
    with pytest.raises(BinaryCacheError, match="not signed by any of the trusted keys"):
        pull(dst, [env.path], url, [SecretKey.generate("test-cache-1").public()])
    with pytest.raises(BinaryCacheError, match="trusted public key"):
        pull(dst, [env.path], url, [])
    assert dst.all_paths() == []


def test_pull_detects_tampered_nar(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    objs = open_object_store(url)
    lib = paths[0]
    ni = parse_narinfo(objs.get(narinfo_key(lib.path)).decode())
    data = bytearray(
        zstandard.ZstdDecompressor().decompress(objs.get(ni.url), max_output_size=1 << 24)
    )
    data[-100] ^= 1  # flip one content bit, keep the NAR well-formed
    evil = zstandard.ZstdCompressor().compress(bytes(data))
    # A consistent FileHash, so only the (signed) NarHash can catch it.
    new_url = f"nar/{hashlib.sha256(evil).hexdigest()}.nar.zst"
    objs.put(new_url, evil)
    from loft.envstore.pathinfo import format_nar_hash

    forged = type(ni)(
        **{
            **ni.__dict__,
            "url": new_url,
            "file_hash": format_nar_hash(hashlib.sha256(evil).digest()),
            "file_size": len(evil),
        }
    )
    objs.put(narinfo_key(lib.path), render_narinfo(forged).encode())
    dst = Store(tmp_path / "dst", durable=False)
    with pytest.raises(HashMismatch, match="libx"):
        pull(dst, [env.path], url, [key.public()])
    assert dst.all_paths() == [] and os.listdir(dst.real_store_dir) == []


def test_pull_detects_corrupt_file(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    objs = open_object_store(url)
    ni = parse_narinfo(objs.get(narinfo_key(paths[0].path)).decode())
    objs.put(ni.url, b"garbage")
    dst = Store(tmp_path / "dst", durable=False)
    with pytest.raises(HashMismatch):
        pull(dst, [env.path], url, [key.public()])
    assert dst.all_paths() == []


def test_pull_checks_lock_hashes(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, _ = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    dst = Store(tmp_path / "dst", durable=False)
    with pytest.raises(HashMismatch, match="lock expects"):
        pull(dst, [env.path], url, [key.public()], expected={env.path: "sha256:" + "0" * 52})
    pull(dst, [env.path], url, [key.public()], expected={env.path: env.nar_hash})
    assert dst.is_valid(env.path)


def test_pull_missing_path_and_missing_cache(tmp_path: Path, key: SecretKey) -> None:
    dst = Store(tmp_path / "dst", durable=False)
    ghost = "/nix/store/" + "a" * 32 + "-ghost"
    with pytest.raises(BinaryCacheError, match="not a binary cache"):
        pull(dst, [ghost], f"file://{tmp_path / 'empty'}", [key.public()])
    url = f"memory://cache-{next(_n)}"
    open_object_store(url).put("nix-cache-info", cache_info_text().encode())
    with pytest.raises(BinaryCacheError, match="not in the binary cache"):
        pull(dst, [ghost], url, [key.public()])
    open_object_store(url).put("nix-cache-info", cache_info_text("/gnu/store").encode())
    with pytest.raises(BinaryCacheError, match="/gnu/store"):
        pull(dst, [ghost], url, [key.public()])


def test_push_refuses_store_modified_on_disk(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    victim = store.physical(paths[0].path) / "lib/libx.so"
    victim.chmod(0o644)
    victim.write_bytes(b"changed")
    with pytest.raises(HashMismatch, match="no longer matches"):
        push(store, [env.path], f"memory://cache-{next(_n)}", key)


def test_topo_levels() -> None:
    levels = topo_levels({"a": ["b", "c", "a"], "b": ["c"], "c": [], "d": ["zzz"]})
    assert levels == [["c", "d"], ["b"], ["a"]]
    with pytest.raises(BinaryCacheError, match="cycle"):
        topo_levels({"a": ["b"], "b": ["a"]})


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static HTTP server on loopback serving ``tmp_path/www``."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_pull_over_http(
    tmp_path: Path,
    src: tuple[Store, PathInfo, list[PathInfo]],
    key: SecretKey,
    http_dir: tuple[Path, str],
) -> None:
    store, env, paths = src
    root, url = http_dir
    push(store, [env.path], f"file://{root}/cache", key)
    dst = Store(tmp_path / "dst", durable=False)
    r = pull(dst, [env.path], f"{url}/cache", [key.public()])
    assert sorted(r.fetched) == sorted(p.path for p in paths)
    with pytest.raises(BinaryCacheError, match="not a binary cache"):
        pull(dst, ["/nix/store/" + "a" * 32 + "-x"], f"{url}/nothing", [key.public()])


def test_pull_from_unreachable_http_cache_fails_fast(tmp_path: Path, key: SecretKey) -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    dst = Store(tmp_path / "dst", durable=False)
    t0 = time.monotonic()
    with pytest.raises(BinaryCacheError, match="cannot reach binary cache"):
        pull(dst, ["/nix/store/" + "a" * 32 + "-x"], f"http://127.0.0.1:{port}", [key.public()])
    assert time.monotonic() - t0 < 5


def test_push_pull_flat_file_and_symlink_paths(tmp_path: Path, key: SecretKey) -> None:
    s = Store(tmp_path / "src", durable=False)
    f = tmp_path / "a.deb"
    f.write_bytes(os.urandom(10_000))
    fixed = s.add_fixed_file(f, "a.deb", hashlib.sha256(f.read_bytes()).hexdigest())
    with s.tmpdir() as t:
        os.symlink(fixed.path, t / "link")
        link = s.add_tree(t / "link", "link-to-deb", references_from=[fixed.path])
    url = f"memory://cache-{next(_n)}"
    push(s, [link.path], url, key)
    dst = Store(tmp_path / "dst", durable=False)
    assert len(pull(dst, [link.path], url, [key.public()]).fetched) == 2
    assert dst.physical(fixed.path).read_bytes() == f.read_bytes()
    assert os.readlink(dst.physical(link.path)) == fixed.path
    assert dst.verify() == {}


@pytest.mark.parametrize("compression", ["xz", "bzip2", "none"])
def test_pull_reads_every_compression(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey, compression: str
) -> None:
    import bz2
    import lzma

    from loft.envstore.binary_cache import nar_key
    from loft.envstore.pathinfo import format_nar_hash

    store, env, paths = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    objs = open_object_store(url)
    for p in paths:  # re-compress every NAR; the signature does not cover the file
        ni = parse_narinfo(objs.get(narinfo_key(p.path)).decode())
        raw = zstandard.ZstdDecompressor().decompress(objs.get(ni.url), max_output_size=1 << 24)
        data = {"xz": lzma.compress, "bzip2": bz2.compress, "none": bytes}[compression](raw)
        digest = hashlib.sha256(data).digest()
        objs.put(nar_key(digest, compression), data)
        new = type(ni)(
            **{
                **ni.__dict__,
                "url": nar_key(digest, compression),
                "compression": compression,
                "file_hash": format_nar_hash(digest),
                "file_size": len(data),
            }
        )
        objs.put(narinfo_key(p.path), render_narinfo(new).encode())
    dst = Store(tmp_path / "dst", durable=False)
    assert len(pull(dst, [env.path], url, [key.public()]).fetched) == 4
    assert dst.verify() == {}


def test_pull_stops_a_nar_longer_than_declared(
    tmp_path: Path, src: tuple[Store, PathInfo, list[PathInfo]], key: SecretKey
) -> None:
    store, env, paths = src
    url = f"memory://cache-{next(_n)}"
    push(store, [env.path], url, key)
    objs = open_object_store(url)
    lib = paths[0]
    ni = parse_narinfo(objs.get(narinfo_key(lib.path)).decode())
    # A (trusted but wrong) narinfo declaring a tiny NAR: the restore must stop early.
    small = type(ni)(**{**ni.__dict__, "nar_size": 1000, "sigs": ()})
    small = small.with_sigs([key.sign(small.fingerprint())])
    objs.put(narinfo_key(lib.path), render_narinfo(small).encode())
    dst = Store(tmp_path / "dst", durable=False)
    with pytest.raises(HashMismatch, match="longer than its declared 1000 bytes"):
        pull(dst, [lib.path], url, [key.public()])
    assert dst.all_paths() == [] and os.listdir(dst.real_store_dir) == []

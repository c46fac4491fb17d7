"""Real Nix substitutes from loft's binary cache, and loft from one Nix wrote.

Offline, into throwaway chroot stores: ``nix-store -r`` must accept loft's narinfos,
zstd NARs and ed25519 signatures, pass ``--verify --check-contents``, and refuse a
cache signed by a key it does not trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from nixtool import Nix

from loft.envstore.binary_cache import pull, push
from loft.envstore.pathinfo import PathInfo
from loft.envstore.signing import PublicKey, SecretKey
from loft.envstore.store import Store


def add(store: Store, files: dict[str, bytes | str], name: str, refs: list[str]) -> PathInfo:
    t = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp")) / "t"
    t.mkdir()
    for rel, data in files.items():
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            os.symlink(data, t / rel)
        else:
            (t / rel).write_bytes(data)
    (t / "bin").mkdir(exist_ok=True)
    return store.add_tree(t, name, references_from=refs)


@pytest.fixture
def env_closure(tmp_path: Path) -> tuple[Store, PathInfo]:
    """lib <- python3, lib <- tool, env -> {python3, tool} (symlinks, like an env forest)."""
    s = Store(tmp_path / "loft", durable=False)
    lib = add(s, {"lib/libx.so.1": os.urandom(40_000)}, "libx-1.0", [])
    py = add(
        s,
        {"bin/python3": b"#!" + lib.path.encode() + b"/lib/libx.so.1\n", "lib/x.py": b"x"},
        "python3-3.11",
        [lib.path],
    )
    tool = add(s, {"bin/tool": f"{lib.path}/lib/libx.so.1"}, "tool-2", [lib.path])
    env = add(
        s,
        {"bin/python3": f"{py.path}/bin/python3", "bin/tool": f"{tool.path}/bin/tool"},
        "env",
        [py.path, tool.path, lib.path],
    )
    assert len(s.closure([env.path])) == 4
    return s, env


def test_nix_substitutes_from_loft_cache(
    tmp_path: Path, env_closure: tuple[Store, PathInfo]
) -> None:
    store, env = env_closure
    key = SecretKey.generate("loft-interop-1")
    cache = tmp_path / "cache"
    push(store, [env.path], f"file://{cache}", key)
    nix = Nix(tmp_path)
    nix.run(
        "nix-store", "-r", env.path,
        "--option", "substituters", f"file://{cache}",
        "--option", "trusted-public-keys", key.public().render(),
    )  # fmt: skip
    nix.run("nix-store", "--verify", "--check-contents")
    info = json.loads(nix.run("nix", "path-info", "--json", "--recursive", env.path))
    by_path = {i["path"]: i for i in info}
    assert set(by_path) == store.closure([env.path])
    for p, i in by_path.items():
        mine = store.query(p)
        assert mine is not None
        assert sorted(i["references"]) == list(mine.references)
        assert i["narSize"] == mine.nar_size
        assert i["signatures"] == [key.sign(_fingerprint(mine))]
    q = nix.run("nix-store", "-q", "--hash", env.path).decode().strip()
    assert q == env.nar_hash


def _fingerprint(info: PathInfo) -> str:
    from loft.envstore.narinfo import fingerprint

    return fingerprint(info.path, info.nar_hash, info.nar_size, info.references)


def test_nix_refuses_cache_signed_by_untrusted_key(
    tmp_path: Path, env_closure: tuple[Store, PathInfo]
) -> None:
    store, env = env_closure
    cache = tmp_path / "cache"
    push(store, [env.path], f"file://{cache}", SecretKey.generate("loft-interop-1"))
    impostor = SecretKey.generate("loft-interop-1").public()  # right name, wrong key
    nix = Nix(tmp_path)
    r = nix.proc(
        "nix-store", "-r", env.path,
        "--option", "substituters", f"file://{cache}",
        "--option", "trusted-public-keys", impostor.render(),
    )  # fmt: skip
    assert r.returncode != 0
    assert (
        "is not signed by any of the keys" in r.stderr
        or "does not have a valid signature" in r.stderr
    )
    assert nix.proc("nix-store", "--check-validity", env.path).returncode != 0


def test_signatures_equal_nix_signatures_with_a_nix_key(tmp_path: Path) -> None:
    nix = Nix(tmp_path)
    nix.plain(
        "nix-store",
        "--generate-binary-cache-key",
        "nixkey-1",
        str(tmp_path / "k.sec"),
        str(tmp_path / "k.pub"),
    )
    sk = SecretKey.parse((tmp_path / "k.sec").read_text())
    assert sk.public() == PublicKey.parse((tmp_path / "k.pub").read_text())
    t = tmp_path / "tree"
    t.mkdir()
    (t / "f").write_bytes(b"signed by both")
    path = nix.run("nix-store", "--add", str(t)).decode().strip()
    nix.run("nix", "store", "sign", "-k", str(tmp_path / "k.sec"), path)
    (info,) = json.loads(nix.run("nix", "path-info", "--json", "--sigs", path))
    store = Store(tmp_path / "loft", durable=False)
    with store.tmpdir() as scratch:
        (scratch / "tree").mkdir()
        (scratch / "tree" / "f").write_bytes(b"signed by both")
        mine = store.add_tree(scratch / "tree", "tree")
    assert mine.path == path
    assert info["signatures"] == [sk.sign(_fingerprint(mine))]


def test_loft_pulls_a_cache_written_by_nix(tmp_path: Path) -> None:
    nix = Nix(tmp_path)
    nix.plain(
        "nix-store",
        "--generate-binary-cache-key",
        "nixkey-2",
        str(tmp_path / "k.sec"),
        str(tmp_path / "k.pub"),
    )
    t = tmp_path / "pkg"
    (t / "bin").mkdir(parents=True)
    (t / "bin/hello").write_bytes(b"#!/bin/sh\necho hello\n")
    (t / "bin/hello").chmod(0o755)
    os.symlink("bin/hello", t / "hello")
    path = nix.run("nix-store", "--add", str(t)).decode().strip()
    trusted = [PublicKey.parse((tmp_path / "k.pub").read_text())]
    for compression in ("zstd", "xz", "none"):
        cache = tmp_path / f"cache-{compression}"
        nix.run(
            "nix", "copy", "--to",
            f"file://{cache}?compression={compression}&secret-key={tmp_path / 'k.sec'}",
            path,
        )  # fmt: skip
        store = Store(tmp_path / f"loft-{compression}", durable=False)
        r = pull(store, [path], f"file://{cache}", trusted)
        assert r.fetched == [path]
        info = store.query(path)
        assert info is not None
        assert info.nar_hash == nix.run("nix-store", "-q", "--hash", path).decode().strip()
        assert (store.physical(path) / "bin/hello").stat().st_mode & 0o777 == 0o555


def test_nix_substitutes_over_http(tmp_path: Path, env_closure: tuple[Store, PathInfo]) -> None:
    import functools
    import http.server
    import threading

    store, env = env_closure
    key = SecretKey.generate("loft-http-1")
    www = tmp_path / "www"
    push(store, [env.path], f"file://{www}", key)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(www))
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        nix = Nix(tmp_path)
        nix.run(
            "nix-store", "-r", env.path,
            "--option", "substituters", url,
            "--option", "trusted-public-keys", key.public().render(),
        )  # fmt: skip
        nix.run("nix-store", "--verify", "--check-contents")
        # And loft pulls the same cache over HTTP.
        dst = Store(tmp_path / "dst", durable=False)
        assert len(pull(dst, [env.path], url, [key.public()]).fetched) == 4
    finally:
        srv.shutdown()
        srv.server_close()


def test_nix_signs_with_a_loft_key_file(tmp_path: Path) -> None:
    nix = Nix(tmp_path)
    sk = SecretKey.generate("loft-made-1")
    (tmp_path / "loft.sec").write_text(sk.render())
    t = tmp_path / "tree"
    t.mkdir()
    (t / "f").write_bytes(b"key file made by loft")
    path = nix.run("nix-store", "--add", str(t)).decode().strip()
    nix.run("nix", "store", "sign", "-k", str(tmp_path / "loft.sec"), path)
    (info,) = json.loads(nix.run("nix", "path-info", "--json", "--sigs", path))
    store = Store(tmp_path / "loft", durable=False)
    with store.tmpdir() as scratch:
        (scratch / "tree").mkdir()
        (scratch / "tree" / "f").write_bytes(b"key file made by loft")
        mine = store.add_tree(scratch / "tree", "tree")
    assert info["signatures"] == [sk.sign(_fingerprint(mine))]
    assert sk.public().verify(_fingerprint(mine), info["signatures"][0])

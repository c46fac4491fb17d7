"""A Nix binary cache on any chunk store (``file:///dir``, ``s3://bucket/prefix``).

Push writes to any chunk store; pull also reads ``http(s)://`` caches (any static file
server, or a Nix cache). Layout, exactly what Nix's substituters read::

    nix-cache-info            StoreDir / WantMassQuery / Priority
    <hash32>.narinfo          one per store path, signed (see :mod:`loft.envstore.narinfo`)
    nar/<filehash>.nar.zst    the zstd-compressed NAR

:func:`push` uploads a closure, references before referrers, each NAR before its narinfo,
so a reader never finds a narinfo whose NAR or references are missing. :func:`pull`
substitutes paths: narinfo → signature check against trusted keys → NAR → FileHash,
NarHash and NarSize checks (in the store's :meth:`~loft.envstore.store.Store.import_nar`)
→ registration, again references first.

A cache is untrusted until a signature says otherwise, and a narinfo is read before its
signature can be checked: every object is read with a size limit (:data:`MAX_NARINFO_SIZE`,
:data:`MAX_CACHE_INFO_SIZE`, and for a NAR what its signed NarSize allows), so a hostile
cache cannot make a pull hold more than that in memory.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import zstandard

from loft.envstore import EnvstoreError, nar, nixbase32
from loft.envstore.bounded import announced, read_bounded, too_large
from loft.envstore.fetch import open_http
from loft.envstore.narinfo import NarInfo, parse_narinfo, render_narinfo
from loft.envstore.pathinfo import HashMismatch, PathInfo, format_nar_hash
from loft.envstore.signing import PublicKey, SecretKey, verify_any
from loft.envstore.store import Store
from loft.envstore.store_path import STORE_DIR, hash_part
from loft.objstore import ObjectNotFound, ObjectStore, open_object_store

CACHE_INFO_KEY = "nix-cache-info"
#: Below the priority of cache.nixos.org (40 is its value too; lower wins in Nix).
DEFAULT_PRIORITY = 40
#: zstd level for pushed NARs: level 3 compresses a python3 closure ~3x at >100 MB/s.
DEFAULT_ZSTD_LEVEL = 3
DEFAULT_PARALLELISM = 4
_DECOMPRESSED_CHUNK = 1 << 20
#: Seconds an HTTP cache may take per request before the pull fails.
HTTP_TIMEOUT = 30.0
#: Largest narinfo read (it is read before its signature is checked). A narinfo is a
#: dozen short lines plus ~50 bytes per reference: 1 MiB holds ~20,000 references, far
#: more than any store path has (a full desktop closure is a few thousand paths).
MAX_NARINFO_SIZE = 1 << 20
#: Largest ``nix-cache-info`` read: three short lines.
MAX_CACHE_INFO_SIZE = 64 << 10

__all__ = [
    "CACHE_INFO_KEY",
    "MAX_CACHE_INFO_SIZE",
    "MAX_NARINFO_SIZE",
    "BinaryCacheError",
    "CacheReader",
    "HttpCache",
    "ObjectStoreCache",
    "PullReport",
    "PushReport",
    "cache_info_text",
    "nar_key",
    "narinfo_key",
    "open_cache_reader",
    "pull",
    "push",
    "topo_levels",
]


class BinaryCacheError(EnvstoreError):
    """The binary cache lacks a path, is inconsistent, or is not trusted."""


class CacheReader(Protocol):
    """What :func:`pull` needs from a cache: whole objects by key, each up to a limit (an
    object store has it through :class:`ObjectStoreCache`)."""

    def get(self, key: str, limit: int) -> bytes:
        """The object under ``key``; :class:`~loft.objstore.ObjectNotFound` when absent,
        :class:`~loft.envstore.bounded.TooLarge` (before reading much more than ``limit``
        bytes) when it is larger than ``limit``."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class HttpCache:
    """A read-only binary cache served over HTTP(S), e.g. by any static file server."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, key: str, limit: int) -> bytes:
        """GET ``<url>/<key>``; 404 is :class:`~loft.objstore.ObjectNotFound`, other
        failures an error."""
        url = f"{self.url}/{key}"
        try:
            with open_http(url, self.timeout) as r:
                return read_bounded(r, limit, url, announced(r.headers.get("Content-Length")))
        except urllib.error.HTTPError as e:
            if e.code in (403, 404):
                raise ObjectNotFound(key) from None
            raise BinaryCacheError(f"{self.url}/{key}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BinaryCacheError(
                f"cannot reach binary cache {self.url}: {reason}",
                hint="check the URL and that the server is up",
            ) from None

    def close(self) -> None:
        """Nothing to release: each request has its own connection."""


class ObjectStoreCache:
    """A cache kept on an object store (``file://``, ``s3://``), read with size limits."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def get(self, key: str, limit: int) -> bytes:
        """The object under ``key``, its size checked before it is read (and after: a
        cache that replaced it in between is caught, though only once it is in memory)."""
        info = self.objects.stat(key)
        if info is None:
            raise ObjectNotFound(key)
        what = f"{self.objects.url}/{key}"
        if info.size > limit:
            raise too_large(what, limit, f"is {info.size} bytes")
        data = self.objects.get(key)
        if len(data) > limit:
            raise too_large(what, limit, f"is {len(data)} bytes")
        return data

    def close(self) -> None:
        """Close the object store."""
        self.objects.close()


def open_cache_reader(url: str) -> CacheReader:
    """``http(s)://`` caches read over HTTP; everything else is an object store URL."""
    if urlsplit(url).scheme in ("http", "https"):
        return HttpCache(url)
    return ObjectStoreCache(open_object_store(url))


def cache_info_text(store_dir: str = STORE_DIR, priority: int = DEFAULT_PRIORITY) -> str:
    """Contents of ``nix-cache-info``."""
    return f"StoreDir: {store_dir}\nWantMassQuery: 1\nPriority: {priority}\n"


def narinfo_key(store_path: str) -> str:
    """Object key of a path's narinfo."""
    return f"{hash_part(store_path)}.narinfo"


def nar_key(file_hash: bytes, compression: str = "zstd") -> str:
    """Object key of a compressed NAR named by the SHA-256 of the compressed bytes."""
    ext = {"zstd": ".zst", "xz": ".xz", "bzip2": ".bz2", "none": ""}[compression]
    return f"nar/{nixbase32.encode(file_hash)}.nar{ext}"


def topo_levels(refs: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Group the keys of ``refs`` so each path comes after every path it references.

    References outside ``refs`` (already present) and self-references are ignored.
    """
    pending = {p: {r for r in rs if r in refs and r != p} for p, rs in refs.items()}
    levels: list[list[str]] = []
    done: set[str] = set()
    while pending:
        level = sorted(p for p, rs in pending.items() if rs <= done)
        if not level:
            raise BinaryCacheError("reference cycle between store paths: " + min(pending))
        levels.append(level)
        done.update(level)
        for p in level:
            del pending[p]
    return levels


@dataclass
class PushReport:
    """What :func:`push` did."""

    pushed: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    nar_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0


@dataclass
class PullReport:
    """What :func:`pull` did."""

    fetched: list[str] = field(default_factory=list)
    already_valid: list[str] = field(default_factory=list)
    nar_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0


def push(
    store: Store,
    paths: Iterable[str],
    to_url: str,
    key: SecretKey,
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    level: int = DEFAULT_ZSTD_LEVEL,
    objects: ObjectStore | None = None,
) -> PushReport:
    """Upload the closure of ``paths`` to the cache at ``to_url``, signed with ``key``.

    Paths whose narinfo is already in the cache are skipped. Each NAR is re-hashed while
    it is compressed, so a store corrupted on disk is never published.
    """
    t0 = time.monotonic()
    own = objects is None
    objs = open_object_store(to_url) if objects is None else objects
    try:
        report = PushReport()
        closure = sorted(store.closure(paths))
        if objs.stat(CACHE_INFO_KEY) is None:
            objs.put(CACHE_INFO_KEY, cache_info_text(store.store_dir).encode())
        present = objs.stat_many([narinfo_key(p) for p in closure])
        infos: dict[str, PathInfo] = {}
        for p in closure:
            if present[narinfo_key(p)] is not None:
                report.already_present.append(p)
                continue
            info = store.query(p)
            assert info is not None  # closure() only returns valid paths
            infos[p] = info

        def upload(p: str) -> tuple[int, int]:
            return _upload_one(store, objs, infos[p], key, level)

        with ThreadPoolExecutor(max(1, parallelism)) as pool:
            for lvl in topo_levels({p: i.references for p, i in infos.items()}):
                for p, (nar_size, file_size) in zip(lvl, pool.map(upload, lvl), strict=True):
                    report.pushed.append(p)
                    report.nar_bytes += nar_size
                    report.file_bytes += file_size
        report.seconds = time.monotonic() - t0
        return report
    finally:
        if own:
            objs.close()


def _upload_one(
    store: Store, objs: ObjectStore, info: PathInfo, key: SecretKey, level: int
) -> tuple[int, int]:
    h = hashlib.sha256()
    size = 0
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False) as w:
        for chunk in nar.dump(store.physical(info.path)):
            h.update(chunk)
            size += len(chunk)
            w.write(chunk)
    if format_nar_hash(h.digest()) != info.nar_hash or size != info.nar_size:
        raise HashMismatch(
            f"{info.path} on disk no longer matches its registered NAR hash; not pushed",
            hint="the store was modified outside loft; delete the path and rebuild it",
        )
    data = out.getvalue()
    file_hash = hashlib.sha256(data).digest()
    ni = NarInfo(
        store_path=info.path,
        url=nar_key(file_hash, "zstd"),
        compression="zstd",
        file_hash=format_nar_hash(file_hash),
        file_size=len(data),
        nar_hash=info.nar_hash,
        nar_size=info.nar_size,
        references=info.references,
        deriver=info.deriver,
        # CA is deliberately left out: Nix accepts content-addressed paths without any
        # signature, and a cache consumer must be able to insist on loft's key.
    )
    ni = ni.with_sigs([key.sign(ni.fingerprint())])
    objs.put(ni.url, data)
    objs.put(narinfo_key(info.path), render_narinfo(ni).encode())
    return info.nar_size, len(data)


def pull(
    store: Store,
    paths: Iterable[str],
    from_url: str,
    trusted: Sequence[PublicKey],
    *,
    expected: Mapping[str, str] | None = None,
    parallelism: int = DEFAULT_PARALLELISM,
    objects: CacheReader | None = None,
) -> PullReport:
    """Substitute ``paths`` and their closures from the cache at ``from_url``.

    Every narinfo must carry a signature by one of ``trusted``; ``expected`` (path -> NAR
    hash, e.g. from a lock) is checked too. Nothing is registered unless its NAR verifies.
    """
    t0 = time.monotonic()
    if not trusted:
        raise BinaryCacheError(
            "refusing to substitute without a trusted public key",
            hint="pass --trust <name>:<base64 public key>",
        )
    own = objects is None
    objs = open_cache_reader(from_url) if objects is None else objects
    try:
        report = PullReport()
        _check_cache_info(objs, store.store_dir, from_url)
        wanted = list(dict.fromkeys(paths))
        narinfos: dict[str, NarInfo] = {}
        todo = []
        for p in wanted:
            if store.is_valid(p):
                report.already_valid.append(p)
            else:
                todo.append(p)
        with ThreadPoolExecutor(max(1, parallelism)) as pool:
            while todo:
                fetched = pool.map(lambda p: _fetch_narinfo(objs, p, store.store_dir), todo)
                nxt: list[str] = []
                for p, ni in zip(todo, fetched, strict=True):
                    _check_narinfo(ni, p, trusted, expected, from_url)
                    narinfos[p] = ni
                    for r in ni.references:
                        if r not in narinfos and r not in nxt and r != p:
                            if store.is_valid(r):
                                continue
                            nxt.append(r)
                todo = [p for p in nxt if p not in narinfos]

            def fetch(p: str) -> tuple[int, int]:
                return _fetch_one(store, objs, narinfos[p], from_url)

            for lvl in topo_levels({p: ni.references for p, ni in narinfos.items()}):
                for p, (nar_size, file_size) in zip(lvl, pool.map(fetch, lvl), strict=True):
                    report.fetched.append(p)
                    report.nar_bytes += nar_size
                    report.file_bytes += file_size
        report.seconds = time.monotonic() - t0
        return report
    finally:
        if own:
            objs.close()


def _check_cache_info(objs: CacheReader, store_dir: str, url: str) -> None:
    try:
        text = objs.get(CACHE_INFO_KEY, MAX_CACHE_INFO_SIZE).decode(errors="replace")
    except ObjectNotFound:
        raise BinaryCacheError(
            f"{url} is not a binary cache (no nix-cache-info)",
            hint="push to it first with loft env push",
        ) from None
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == "StoreDir" and v != store_dir:
            raise BinaryCacheError(f"{url} holds paths for store {v}, not {store_dir}")


def _fetch_narinfo(objs: CacheReader, path: str, store_dir: str) -> NarInfo:
    try:
        text = objs.get(narinfo_key(path), MAX_NARINFO_SIZE).decode(errors="replace")
    except ObjectNotFound:
        raise BinaryCacheError(
            f"{path} is not in the binary cache",
            hint="push it there with `loft env push`, or build the lock here with `loft env build`",
        ) from None
    return parse_narinfo(text, store_dir)


def _check_narinfo(
    ni: NarInfo,
    path: str,
    trusted: Sequence[PublicKey],
    expected: Mapping[str, str] | None,
    url: str,
) -> None:
    if ni.store_path != path:
        raise BinaryCacheError(f"narinfo for {path} in {url} describes {ni.store_path}")
    if not verify_any(ni.fingerprint(), ni.sigs, trusted):
        raise BinaryCacheError(
            f"{path} in {url} is not signed by any of the trusted keys "
            f"({', '.join(k.name for k in trusted)})",
            hint="check --trust, or re-push the path with the right key",
        )
    if expected is not None and path in expected and expected[path] != ni.nar_hash:
        raise HashMismatch(
            f"{path} in {url} has NAR hash {ni.nar_hash}, the lock expects {expected[path]}",
            hint="the cache holds a different build; nothing was added",
        )


def _decompressor(compression: str) -> Callable[[bytes], Iterator[bytes]]:
    def none(data: bytes) -> Iterator[bytes]:
        yield data

    def zstd(data: bytes) -> Iterator[bytes]:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        while chunk := reader.read(_DECOMPRESSED_CHUNK):
            yield chunk

    def stepwise(d: lzma.LZMADecompressor | bz2.BZ2Decompressor, data: bytes) -> Iterator[bytes]:
        # Bounded output per step, so a bomb is caught by the NarSize check early.
        chunk = d.decompress(data, max_length=_DECOMPRESSED_CHUNK)
        while True:
            if chunk:
                yield chunk
            if d.eof or d.needs_input:
                return
            chunk = d.decompress(b"", max_length=_DECOMPRESSED_CHUNK)

    def xz(data: bytes) -> Iterator[bytes]:
        return stepwise(lzma.LZMADecompressor(), data)

    def bzip2(data: bytes) -> Iterator[bytes]:
        return stepwise(bz2.BZ2Decompressor(), data)

    table = {"none": none, "zstd": zstd, "xz": xz, "bzip2": bzip2}
    if compression not in table:
        raise BinaryCacheError(f"unsupported NAR compression {compression!r}")
    return table[compression]


def _nar_file_limit(ni: NarInfo) -> int:
    """The most bytes a NAR file may have: its FileSize, and never more than its signed
    NarSize compressed at worst (bzip2 adds up to 1% + 600 bytes, xz and zstd less)."""
    worst = ni.nar_size + ni.nar_size // 64 + (1 << 20)
    return worst if ni.file_size is None else min(ni.file_size, worst)


def _fetch_one(store: Store, objs: CacheReader, ni: NarInfo, url: str) -> tuple[int, int]:
    key = ni.url
    if key.startswith("/") or ".." in key.split("/") or "://" in key:
        raise BinaryCacheError(f"narinfo for {ni.store_path} has a bad URL {key!r}")
    decompress = _decompressor(ni.compression)
    try:
        data = objs.get(key, _nar_file_limit(ni))
    except ObjectNotFound:
        raise BinaryCacheError(
            f"{url} lacks {key}, the NAR of {ni.store_path}",
            hint="the cache is incomplete: push the environment to it again",
        ) from None
    if ni.file_size is not None and len(data) != ni.file_size:
        raise HashMismatch(f"{key} in {url} is {len(data)} bytes, narinfo says {ni.file_size}")
    if ni.file_hash is not None and format_nar_hash(hashlib.sha256(data).digest()) != (
        ni.file_hash
    ):
        raise HashMismatch(f"{key} in {url} does not match its FileHash; nothing was added")
    info = PathInfo(
        path=ni.store_path,
        nar_hash=ni.nar_hash,
        nar_size=ni.nar_size,
        references=ni.references,
        deriver=ni.deriver,
        ca=ni.ca,
        recipe={"substituted_from": url},
    )
    store.import_nar(decompress(data), info)
    return ni.nar_size, len(data)

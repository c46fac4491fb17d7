"""An object store in a local directory: one file per key, written tmp + fsync + rename."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loft.objstore.store import (
    DEFAULT_PARALLELISM,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
)
from loft.priority import PriorityPools

_TMP_SUFFIX = ".tmp"
#: Objects at least this large (chunks, not heads or small manifests) leave the page
#: cache once read, as they do once written.
_DROP_MIN = 256 << 10


class FileObjectStore:
    """Objects as files under ``root``; the key's slashes become directories."""

    def __init__(self, root: Path, *, parallelism: int = DEFAULT_PARALLELISM) -> None:
        self.root = root
        self.url = f"file://{root}"
        # Transfers run at their caller's priority: a commit's uploads in the background.
        self._pool = PriorityPools(parallelism, "filestore")
        self._tmp_counter = 0
        self._tmp_lock = threading.Lock()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ObjectStoreError(
                f"cannot create object store directory {root}: {e.strerror}"
            ) from e

    @classmethod
    def from_url(cls, url: str) -> FileObjectStore:
        """Open ``file:///absolute/path``."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ObjectStoreError(
                f"bad file object store URL {url!r}", hint="use file:///abs/path"
            )
        return cls(Path(unquote(parts.path)))

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or key.endswith(_TMP_SUFFIX):
            raise ValueError(f"invalid key {key!r}")
        return self.root / key

    def _write(self, key: str, value: bytes | bytearray) -> Path:
        path = self._path(key)
        with self._tmp_lock:
            self._tmp_counter += 1
            n = self._tmp_counter
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{n}{_TMP_SUFFIX}")
        try:
            # Private: what a store holds (chunks of every tenant's disk) is the service's.
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(value)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                # Written once, read back rarely here (a commit's node has the bytes in
                # its working copy): dropping the clean pages now made writing 4 MiB
                # objects with an fsync each cost 340 us of CPU per MiB instead of
                # 1,200-2,200 (the kernel filling new pages while the page cache grows),
                # and in sustained writes with commits running these writes were 45% of
                # the disk service's CPU (perf record, bench/nbd_vs_nbdkit.py).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ObjectStoreError(f"cannot write {path}: {e.strerror}") from e
        return path

    def _sync_dirs(self, paths: Sequence[Path]) -> None:
        for d in {p.parent for p in paths}:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
                # Written once, read back rarely here (a commit's node has the bytes in
                # its working copy): dropping the clean pages now made writing 4 MiB
                # objects with an fsync each cost 340 us of CPU per MiB instead of
                # 1,200-2,200 (the kernel filling new pages while the page cache grows),
                # and in sustained writes with commits running these writes were 45% of
                # the disk service's CPU (perf record, bench/nbd_vs_nbdkit.py).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def put(self, key: str, value: bytes | bytearray) -> None:
        self._sync_dirs([self._write(key, value)])

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        if len(items) <= 1:
            for key, value in items:
                self.put(key, value)
            return
        paths = list(self._pool.map(lambda kv: self._write(*kv), items))
        self._sync_dirs(paths)

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                value = f.read()
                if len(value) >= _DROP_MIN:
                    # Read once, to be fetched into a volume: keeping the pages would
                    # grow the page cache by every chunk read (loft.directio).
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                return value
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise ObjectStoreError(f"cannot read {key}: {e.strerror}") from e

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if len(keys) <= 1:
            return {k: self.get(k) for k in keys}
        return dict(zip(keys, self._pool.map(self.get, keys), strict=True))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def stat_many(self, keys: Sequence[str]) -> dict[str, ObjectInfo | None]:
        return {k: self.stat(k) for k in keys}

    def touch(self, key: str) -> bool:
        try:
            os.utime(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the directory that holds the prefix, never the whole store.
        head, _, _ = prefix.rpartition("/")
        start = self.root / head if head else self.root
        if not start.is_dir():
            return
        for dirpath, _dirs, files in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, st.st_mtime)

    def set_mtime(self, key: str, mtime: float) -> None:
        """Age an object (tests of GC grace periods)."""
        os.utime(self._path(key), (time.time(), mtime))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

"""A batch of paths added to the store together: hashed as they are added, made valid
all at once (one flush and one transaction per :data:`COMMIT_CHUNK` paths).

The protocol and its crash guarantees are :class:`Batch`'s docstring; the store's side
(locks, renames, the flush, registering) is :class:`~loft.envstore.store.Store`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loft.envstore import EnvstoreError, nar, nixbase32
from loft.envstore.canonical import canonicalise
from loft.envstore.fs import force_rmtree
from loft.envstore.pathinfo import (
    HashMismatch,
    InvalidPath,
    PathInfo,
    format_nar_hash,
    parse_nar_hash,
)
from loft.envstore.refs import RefScanner
from loft.envstore.store_path import fixed_output_path, parse, source_path, validate_name

if TYPE_CHECKING:
    from loft.envstore.store import Store

__all__ = ["COMMIT_CHUNK", "WRITEBACK_BYTES", "Batch", "open_batch"]


#: Bytes staged in a batch after which its data is written back in the background, so
#: the flush before registering finds little left to write.
WRITEBACK_BYTES = 64 << 20
#: Paths made valid per flush and transaction. A commit holds one lock file open per path
#: of a chunk (concurrent adders of a path serialise on it), so this stays well below the
#: usual limit of 1024 open files.
COMMIT_CHUNK = 500


@dataclass(frozen=True)
class _Staged:
    src: Path  # the finished, canonical contents, still in scratch space
    info: PathInfo


class Batch:
    """Paths added together (from :meth:`~loft.envstore.store.Store.batch`).

    ``add_tree``, ``add_fixed_file`` and ``import_nar`` do all the work that depends on
    the contents in the calling thread (canonicalise, hash, scan references, verify) and
    return the path's info; nothing is visible in the store yet. :meth:`commit` then, per
    chunk of :data:`COMMIT_CHUNK` paths: takes the GC lock shared and every path's lock
    (in sorted order, so concurrent batches cannot deadlock), renames the new paths into
    place, flushes the filesystem once, temp-roots them and registers them all in one
    transaction. A kill -9 before that transaction commits leaves only unregistered
    directories (garbage), and power loss after it cannot lose their data. While the
    batch fills, every :data:`WRITEBACK_BYTES` staged start a background syncfs, so the
    data is mostly on disk by the time the flush that guards registration runs. References
    must be valid already or added earlier in the same batch. Safe to fill from several
    threads.
    """

    def __init__(self, store: Store, scratch: Path) -> None:
        self.store = store
        self._scratch = scratch
        self._items: list[_Staged] = []
        self._lock = threading.Lock()
        self._results: dict[str, PathInfo] = {}
        self._unflushed = 0
        self._writer: threading.Thread | None = None

    def add_tree(
        self,
        src: Path,
        name: str,
        *,
        references_from: Iterable[str] = (),
        deriver: str | None = None,
        recipe: dict[str, object] | None = None,
    ) -> PathInfo:
        """Canonicalise and hash ``src`` now, add it as a ``source`` path on commit.

        ``src`` must stay where it is until the commit, which consumes it; it should sit
        in :meth:`Store.tmpdir`. See :meth:`Store.add_tree`.
        """
        validate_name(name)
        canonicalise(src)
        h = hashlib.sha256()
        size = 0
        scanner = RefScanner(references_from)
        for chunk in nar.dump(src):
            h.update(chunk)
            scanner.feed(chunk)
            size += len(chunk)
        digest = h.digest()
        refs = sorted(scanner.found)
        info = PathInfo(
            path=source_path(digest, name, refs, store_dir=self.store.store_dir),
            nar_hash=format_nar_hash(digest),
            nar_size=size,
            references=tuple(refs),
            deriver=deriver,
            ca=f"fixed:r:sha256:{nixbase32.encode(digest)}",
            recipe=recipe,
        )
        return self._stage(src, info)

    def add_fixed_file(
        self, file: Path, name: str, sha256_hex: str, *, recipe: dict[str, object] | None = None
    ) -> PathInfo:
        """Verify ``file`` now, add it as a flat fixed-output path on commit.

        See :meth:`Store.add_fixed_file`; an already valid path is returned as it is.
        """
        store = self.store
        sha256_hex = sha256_hex.lower()
        path = fixed_output_path(sha256_hex, name, store.store_dir)
        existing = store._existing(path)
        if existing is not None:
            with self._lock:
                self._results.setdefault(path, existing)
            return existing
        st = os.stat(file)
        if not stat.S_ISREG(st.st_mode):
            raise EnvstoreError(f"{file} is not a regular file")
        flat = hashlib.sha256()
        narh = hashlib.sha256()
        head = nar.encode_str(nar.MAGIC) + b"".join(
            nar.encode_str(s) for s in (b"(", b"type", b"regular", b"contents")
        )
        narh.update(head + struct.pack("<Q", st.st_size))
        n = 0
        with open(file, "rb") as f:
            while block := f.read(nar.READ_CHUNK):
                flat.update(block)
                narh.update(block)
                n += len(block)
        if flat.hexdigest() != sha256_hex:
            raise HashMismatch(
                f"{file}: sha256 is {flat.hexdigest()}, expected {sha256_hex}",
                hint="the artefact was tampered with or the lock is stale; nothing was added",
            )
        tail = b"\0" * (-n % 8) + nar.encode_str(b")")
        narh.update(tail)
        info = PathInfo(
            path=path,
            nar_hash=format_nar_hash(narh.digest()),
            nar_size=len(head) + 8 + n + len(tail),
            references=(),
            ca=f"fixed:sha256:{nixbase32.encode(bytes.fromhex(sha256_hex))}",
            recipe=recipe,
        )
        src = Path(file)
        if not _inside(src, store.root / "tmp"):
            src = self._scratch / f"file-{secrets.token_hex(8)}"
            shutil.copyfile(file, src)
        os.chmod(src, 0o444)
        os.utime(src, (1, 1))
        return self._stage(src, info)

    def import_nar(self, chunks: Iterable[bytes], info: PathInfo) -> PathInfo:
        """Restore and check a NAR now, register ``info`` on commit.

        See :meth:`Store.import_nar`; an already valid path is returned as it is.
        """
        store = self.store
        parse(info.path, store.store_dir)
        existing = store._existing(info.path)
        if existing is not None:
            with self._lock:
                self._results.setdefault(info.path, existing)
            return existing
        want = parse_nar_hash(info.nar_hash)
        h = hashlib.sha256()
        counted = 0

        def hashed() -> Iterator[bytes]:
            nonlocal counted
            for c in chunks:
                h.update(c)
                counted += len(c)
                if counted > info.nar_size:
                    # Stop a decompression bomb before it fills the disk.
                    raise HashMismatch(
                        f"NAR of {info.path} is longer than its declared {info.nar_size} bytes",
                        hint="the binary cache is corrupt or was tampered with; nothing was added",
                    )
                yield c

        tree = self._scratch / f"nar-{secrets.token_hex(8)}"
        try:
            nar.restore(hashed(), tree)
            if h.digest() != want or counted != info.nar_size:
                raise HashMismatch(
                    f"NAR of {info.path} hashes to {format_nar_hash(h.digest())} "
                    f"({counted} bytes), expected {info.nar_hash} ({info.nar_size} bytes)",
                    hint="the binary cache is corrupt or was tampered with; nothing was added",
                )
        except BaseException:
            force_rmtree(tree)
            raise
        return self._stage(tree, info)

    def _stage(self, src: Path, info: PathInfo) -> PathInfo:
        with self._lock:
            self._items.append(_Staged(src, info))
            self._unflushed += info.nar_size
            if (
                self._unflushed >= WRITEBACK_BYTES
                and self.store.durable
                and (self._writer is None or not self._writer.is_alive())
            ):
                # The staged data lives on the store's filesystem (tmp/), so syncfs now
                # does most of the writing the flush at commit time would otherwise wait
                # for; correctness still rests on that later flush alone.
                self._unflushed = 0
                self._writer = threading.Thread(target=self.store._writeback, daemon=True)
                self._writer.start()
        return info

    def result(self, store_path: str) -> PathInfo:
        """After :meth:`commit`: the path's info as the store holds it (which, for a path
        that was valid already, is the earlier registration)."""
        return self._results[store_path]

    def commit(self) -> None:
        """Make every staged path valid (see the class docstring)."""
        with self._lock:
            items, self._items = self._items, []
            writer = self._writer
        if writer is not None:
            writer.join()
        for i in range(0, len(items), COMMIT_CHUNK):
            self._commit(items[i : i + COMMIT_CHUNK])

    def _commit(self, items: Sequence[_Staged]) -> None:
        store = self.store
        with store.gc_lock(exclusive=False), contextlib.ExitStack() as locks:
            for p in sorted({it.info.path for it in items}):
                locks.enter_context(store._path_lock(p))
            chosen: dict[str, PathInfo] = {}
            new: list[_Staged] = []
            for it in items:
                path = it.info.path
                have = chosen.get(path) or self._results.get(path) or store.query(path)
                if have is not None:  # valid already, or twice in this batch
                    chosen[path] = have
                    force_rmtree(it.src)
                    continue
                for ref in it.info.references:
                    if ref != path and ref not in chosen and not store.is_valid(ref):
                        raise InvalidPath(ref)
                chosen[path] = it.info
                new.append(it)
            for it in new:
                store._move_into_place(it.src, it.info.path)
            if new:
                store._flush()
            # Temp roots first: once registered, a GC after our shared lock is released
            # must already see that this process still needs the paths.
            store.add_temp_roots(chosen)
            if new:
                store._register([it.info for it in new])
        self._results.update(chosen)


@contextlib.contextmanager
def open_batch(store: Store) -> Iterator[Batch]:
    """What :meth:`Store.batch <loft.envstore.store.Store.batch>` returns: a batch in a
    fresh scratch directory, committed when the block ends without an exception."""
    with store.tmpdir() as scratch:
        b = Batch(store, scratch)
        yield b
        b.commit()


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True

"""Reference scanning: which store paths does a tree mention?

Like Nix, a path refers to another when the other's 32-character hash part occurs anywhere
in its NAR serialisation (file contents, symlink targets, file names). The scanner finds
every run of nix-base32 characters at least 32 long with one C-level regex pass per chunk
and looks each 32-character window up in the candidate set, so its cost does not grow with
the number of candidates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from loft.envstore import nar
from loft.envstore.store_path import HASH_PART_LEN, hash_part

_RUN = re.compile(rb"[0123456789abcdfghijklmnpqrsvwxyz]{32,}")

__all__ = ["RefScanner", "scan_references"]


class RefScanner:
    """Feed NAR (or any) bytes in chunks; :attr:`found` collects the candidate paths seen."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self._by_hash: dict[bytes, str] = {hash_part(c).encode(): c for c in candidates}
        self._tail = b""
        self.found: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        """Scan one more chunk; matches spanning chunk boundaries are found too."""
        if not self._by_hash:
            return
        # Any window crossing the boundary starts in the last 31 bytes of what came before.
        buf = self._tail + chunk
        self._tail = buf[-(HASH_PART_LEN - 1) :]
        for m in _RUN.finditer(buf):
            run = m.group()
            for i in range(len(run) - HASH_PART_LEN + 1):
                path = self._by_hash.get(run[i : i + HASH_PART_LEN])
                if path is not None:
                    self.found.add(path)


def scan_references(path: Path, candidates: Iterable[str]) -> set[str]:
    """Store paths among ``candidates`` whose hash part occurs in the NAR of ``path``."""
    scanner = RefScanner(candidates)
    for chunk in nar.dump(path):
        scanner.feed(chunk)
    return scanner.found

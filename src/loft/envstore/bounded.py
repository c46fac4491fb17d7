"""Reading untrusted documents with a size limit, so no answer can exhaust memory.

Every document envstore reads from a registry, a binary cache or a tool that talked to
one (a narinfo, ``nix-cache-info``, pip's report, npm's lock file, the apt resolver's
answer) is read through :func:`read_bounded` with a limit named next to its reader, with
the reason for its value. At most ``limit + 1`` bytes are ever read: one more than the
limit proves the document too large without reading the rest of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from loft.envstore import EnvstoreError

__all__ = [
    "Readable",
    "TooLarge",
    "announced",
    "read_bounded",
    "read_file_bounded",
    "too_large",
]

_PIECE = 1 << 20


class TooLarge(EnvstoreError):
    """An untrusted document is larger than loft accepts for its kind."""


class Readable(Protocol):
    """Anything with ``read(n)``: a file, an HTTP response, a pipe."""

    def read(self, n: int = -1, /) -> bytes: ...


def read_bounded(stream: Readable, limit: int, what: str, declared: int | None = None) -> bytes:
    """All of ``stream``, or :class:`TooLarge` naming ``what`` once it exceeds ``limit``.

    ``declared`` is a length announced in advance (``Content-Length``, a stat size): when
    it is over the limit the document is refused before a byte of it is read.
    """
    if declared is not None and declared > limit:
        raise too_large(what, limit, f"announces {declared} bytes")
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        piece = stream.read(min(_PIECE, limit + 1 - got))
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        got += len(piece)
    raise too_large(what, limit, "is longer")


def announced(content_length: str | None) -> int | None:
    """The length a ``Content-Length`` header announces; None when absent or malformed."""
    if content_length is None or not content_length.isdigit():
        return None
    return int(content_length)


def read_file_bounded(path: Path, limit: int, what: str) -> bytes:
    """:func:`read_bounded` of a local file."""
    with path.open("rb") as f:
        return read_bounded(f, limit, what, os.fstat(f.fileno()).st_size)


def too_large(what: str, limit: int, detail: str) -> TooLarge:
    """The error for a document over its limit (what it is, the limit, how we know)."""
    return TooLarge(
        f"{what} {detail}: more than the {limit} bytes loft accepts",
        hint="the source is broken or hostile; nothing was kept from it",
    )

"""Fetching artefacts: download, verify against the registry's hash, nothing else.

A fetch writes into a scratch directory and proves the bytes match the hash the lock pins
(Debian/PyPI sha256, npm SRI integrity) before anyone may use them; only then does the
builder add the file to the store as a fixed-output path — the store's copy is loft's
mirror, which outlives the registry's (Debian drops superseded versions).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from loft.envstore import EnvstoreError

__all__ = ["FetchError", "HashMismatch", "download", "parse_integrity", "verify_file"]

_CHUNK = 1 << 20
_TIMEOUT = 60
_RETRIES = 3


class FetchError(EnvstoreError):
    """An artefact could not be downloaded."""


class HashMismatch(EnvstoreError):
    """An artefact's bytes do not match the hash the lock pins (tampered or wrong)."""


def parse_integrity(sri: str) -> tuple[str, bytes]:
    """``"sha512-<base64>"`` -> ``("sha512", digest)``; the strongest of several wins."""
    best: tuple[str, bytes] | None = None
    rank = {"sha1": 1, "sha256": 2, "sha384": 3, "sha512": 4}
    for item in sri.split():
        algo, _, b64 = item.partition("-")
        if algo in rank and (best is None or rank[algo] > rank[best[0]]):
            best = (algo, base64.b64decode(b64))
    if best is None:
        raise HashMismatch(f"unsupported integrity string {sri!r}")
    return best


def verify_file(path: Path, what: str, *, sha256: str = "", integrity: str = "") -> str:
    """Check ``path`` against ``sha256`` (hex) and/or ``integrity`` (SRI); return its sha256."""
    algo, want = parse_integrity(integrity) if integrity else ("sha256", b"")
    h256 = hashlib.sha256()
    hx = hashlib.new(algo) if integrity else None
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h256.update(chunk)
            if hx is not None:
                hx.update(chunk)
    got = h256.hexdigest()
    if sha256 and got != sha256:
        raise HashMismatch(
            f"{what}: sha256 mismatch (lock pins {sha256[:16]}..., got {got[:16]}...)",
            hint="the artefact was tampered with or the lock is wrong; nothing was added",
        )
    if hx is not None and hx.digest() != want:
        raise HashMismatch(
            f"{what}: {algo} integrity mismatch",
            hint="the artefact was tampered with or the lock is wrong; nothing was added",
        )
    return got


def download(
    url: str, dest: Path, what: str, progress: Callable[[int], None] | None = None
) -> None:
    """Download ``url`` (http, https or file) to ``dest``, retrying transient failures."""
    last: Exception | None = None
    for _ in range(_RETRIES):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "loft-envstore"})
            with urllib.request.urlopen(req, timeout=_TIMEOUT) as r, dest.open("wb") as f:
                done = 0
                while chunk := r.read(_CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            return
        except urllib.error.HTTPError as e:
            if e.code in (403, 404, 410):
                raise FetchError(
                    f"{what}: {url} answered {e.code}",
                    hint="the registry dropped it: re-resolve with `loft env lock --refresh`, "
                    "or realise the lock from a binary cache (`loft env pull`)",
                ) from e
            last = e
        except (urllib.error.URLError, OSError) as e:
            last = e
    raise FetchError(f"{what}: cannot download {url}: {last}")


def copy_local(src: Path, dest: Path) -> None:
    """Copy an artefact already present elsewhere on this machine (a peer store's copy)."""
    shutil.copyfile(src, dest)

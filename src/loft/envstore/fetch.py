"""Fetching artefacts: download, verify against the registry's hash, nothing else.

A fetch writes into a scratch directory and proves the bytes match the hash the lock pins
(Debian/PyPI sha256, npm SRI integrity) before anyone may use them; only then does the
builder add the file to the store as a fixed-output path — the store's copy is loft's
mirror, which outlives the registry's (Debian drops superseded versions).

URLs come from an untrusted lock: only ``http(s)://`` is fetched, redirects included (so a
server cannot send the builder to ``file:`` or ``ftp:``), a download stops as soon as it
exceeds its declared size, and no error ever repeats a hash of what a URL served (which
would be an oracle on any document the builder's network can reach).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

from loft.envstore import EnvstoreError
from loft.envstore.bounded import announced
from loft.envstore.fields import MAX_ARTEFACT_SIZE, InvalidField, check_url

__all__ = [
    "FetchError",
    "HashMismatch",
    "copy_local",
    "download",
    "open_http",
    "parse_integrity",
    "verify_file",
]

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
            f"{what}: sha256 mismatch (the lock pins {sha256[:16]}...)",
            hint="the artefact was tampered with or the lock is wrong; nothing was added",
        )
    if hx is not None and hx.digest() != want:
        raise HashMismatch(
            f"{what}: {algo} integrity mismatch",
            hint="the artefact was tampered with or the lock is wrong; nothing was added",
        )
    return got


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another ``http(s)://`` URL, and say so when refusing
    (urllib itself would follow one to ``ftp:``, and fail others as an HTTP error)."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> Any:
        newurl = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        try:
            check_url(newurl, "redirect")
        except InvalidField as e:
            fp.close()
            raise FetchError(f"{req.full_url} redirects elsewhere: {e.message}") from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def open_http(url: str, timeout: float) -> http.client.HTTPResponse:
    """GET ``url``, following redirects only to ``http(s)://`` (:class:`FetchError`
    otherwise); urllib's errors pass through for the caller to judge."""
    req = urllib.request.Request(url, headers={"User-Agent": "loft-envstore"})
    response: http.client.HTTPResponse = _OPENER.open(req, timeout=timeout)
    return response


def download(
    url: str,
    dest: Path,
    what: str,
    progress: Callable[[int], None] | None = None,
    max_bytes: int = MAX_ARTEFACT_SIZE,
) -> None:
    """Download the ``http(s)://`` ``url`` to ``dest``, retrying transient failures.

    More than ``max_bytes`` (the size the lock declares) is :class:`FetchError` as soon as
    it is announced or read, and ``dest`` is removed: nothing is kept from such a server.
    """
    try:
        check_url(url, f"{what}: URL")
    except InvalidField as e:
        raise FetchError(e.message, hint=e.hint) from None
    last: Exception | None = None
    try:
        for _ in range(_RETRIES):
            try:
                _download_once(url, dest, progress, max_bytes, what)
                return
            except urllib.error.HTTPError as e:
                if e.code in (403, 404, 410):
                    raise FetchError(
                        f"{what}: {url} answered {e.code}",
                        hint="the registry dropped it: re-resolve with `loft env lock "
                        "--refresh`, or realise the lock from a binary cache (`loft env pull`)",
                    ) from e
                last = e
            except (urllib.error.URLError, OSError) as e:
                last = e
        raise FetchError(f"{what}: cannot download {url}: {last}")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _download_once(
    url: str, dest: Path, progress: Callable[[int], None] | None, max_bytes: int, what: str
) -> None:
    with open_http(url, _TIMEOUT) as r, dest.open("wb") as f:
        declared = announced(r.headers.get("Content-Length"))
        if declared is not None and declared > max_bytes:
            raise _too_big(what, url, max_bytes, f"announces {declared} bytes")
        done = 0
        while chunk := r.read(min(_CHUNK, max_bytes + 1 - done)):
            done += len(chunk)
            if done > max_bytes:
                raise _too_big(what, url, max_bytes, "sends more")
            f.write(chunk)
            if progress is not None:
                progress(len(chunk))


def _too_big(what: str, url: str, max_bytes: int, detail: str) -> FetchError:
    return FetchError(
        f"{what}: {url} {detail}, more than the {max_bytes} bytes it may have",
        hint="the lock's size is the limit (or loft's cap when it has none); the server "
        "is broken or hostile, or the lock is wrong; nothing was kept",
    )


def copy_local(src: Path, dest: Path) -> None:
    """Copy an artefact already present elsewhere on this machine (a peer store's copy)."""
    shutil.copyfile(src, dest)

"""Checks on the fields of a lock and of what resolvers report: all of them untrusted.

A ``loft.lock`` comes from a repository, and a resolver's answer from a registry. Every
field the builder will use to fetch (a URL), to write (an npm ``location``, a bin link, a
store path name), to name something (package names and versions, which also reach the
unpack jail's command line) or to bound something (sizes, hashes) is checked here,
when a :class:`~loft.envstore.lock.LockedArtefact` or a build ``Pin`` is made: a hostile
lock is refused while it is parsed, before any I/O.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from loft.envstore import EnvstoreError
from loft.envstore.confined import MAX_COMPONENT, MAX_PATH, check_relative

__all__ = [
    "ALLOWED_URL_SCHEMES",
    "MAX_ARTEFACT_SIZE",
    "InvalidField",
    "check_artefact",
    "check_integrity",
    "check_sha256_hex",
    "check_size",
    "check_url",
]

#: The only URL schemes an artefact may be fetched with. A lock is untrusted, so
#: ``file:`` (any file of the builder's host, read as root), ``ftp:``, ``data:`` and the
#: rest are refused. Local copies are reached another way: the builder's mirror stores
#: are looked up by fixed-output path, never through a URL in the lock.
ALLOWED_URL_SCHEMES = ("http", "https")
#: Longest URL accepted (registries' URLs are well under 300 characters).
MAX_URL = 4096
#: Largest artefact file accepted, whatever the lock declares: above the biggest files
#: real environments use (CUDA wheels on PyPI reach ~2.5 GB, Debian's biggest .debs a
#: few hundred MB), below what would fill a node's scratch space.
MAX_ARTEFACT_SIZE = 4 << 30

_MAX_NAME = 214  # npm's limit on a package name; Debian's and PyPI's names are shorter
_MAX_VERSION = 128
_NAME = {
    "deb": re.compile(r"[a-z0-9][a-z0-9+.-]+"),  # Debian Policy 5.6.1
    "wheel": re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"),  # PEP 508
    "npm": re.compile(r"(@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*"),
}
_VERSION = {
    "deb": re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~:-]*"),  # [epoch:]upstream[-revision]
    "wheel": re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]*"),  # PEP 440
    "npm": re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]*"),  # semver
}
_NPM_SEGMENT = r"(@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*"
_NPM_LOCATION = re.compile(rf"node_modules/{_NPM_SEGMENT}(/node_modules/{_NPM_SEGMENT})*")
_SRI_LENGTHS = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class InvalidField(EnvstoreError):
    """A field of a lock (or of a resolver's answer) is malformed or unsafe."""


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidField(f"{what} is not a string: {value!r:.80}")
    if len(value) > limit:
        raise InvalidField(f"{what} {value[:40]!r}... is longer than {limit} characters")
    return value


def check_url(url: object, what: str = "URL") -> str:
    """``url`` when it is an ``http(s)://host/...`` URL of printable ASCII, else
    :class:`InvalidField`. The scheme is compared without case, as RFC 3986 says."""
    url = _text(url, what, MAX_URL)
    # urllib strips surrounding whitespace and "<URL:...>" before it looks at a scheme:
    # only an exact, printable URL may get that far.
    if not url.isascii() or not url.isprintable() or " " in url:
        raise InvalidField(f"{what} {url[:200]!r} has spaces or control characters")
    if not url.lower().startswith(tuple(f"{s}://" for s in ALLOWED_URL_SCHEMES)):
        raise InvalidField(
            f"{what} {url[:200]!r} is not an http:// or https:// URL",
            hint="a lock may only fetch over HTTP(S); re-create it with `loft env lock`",
        )
    if not urlsplit(url).hostname:
        raise InvalidField(f"{what} {url[:200]!r} names no host")
    return url


def check_sha256_hex(value: object, what: str) -> str:
    """A lowercase hex SHA-256 (64 characters)."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise InvalidField(f"{what} {value!r:.80} is not a lowercase hex sha256")
    return value


def check_integrity(sri: object, what: str = "integrity") -> str:
    """An SRI string (``sha512-<base64>``, several separated by spaces) whose digests
    all have their algorithm's length."""
    sri = _text(sri, what, 1024)
    items = sri.split()
    if not items:
        raise InvalidField(f"{what} is empty")
    for item in items:
        algo, _, b64 = item.partition("-")
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if _SRI_LENGTHS.get(algo) != len(digest):
            raise InvalidField(f"{what} {item[:100]!r} is not a sha1/256/384/512 SRI hash")
    return sri


def check_size(value: object, what: str, limit: int) -> int:
    """A non-negative integer up to ``limit`` (JSON ``true`` is not a size)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise InvalidField(f"{what} {value!r:.80} is not a size between 0 and {limit}")
    return value


def check_artefact(
    kind: str, name: object, version: object, url: object, location: object, bin: object
) -> None:
    """The fields a lock and a resolver share: names and versions in their registry's
    alphabet, an HTTP(S) URL, and for npm a ``node_modules/...`` location and plain bin
    links (nothing else has either)."""
    if kind not in _NAME:
        raise InvalidField(f"unknown artefact kind {kind!r:.40}")
    name = _text(name, f"{kind} name", _MAX_NAME)
    if not _NAME[kind].fullmatch(name):
        raise InvalidField(f"{name[:100]!r} is not a valid {kind} package name")
    version = _text(version, f"{kind} version of {name}", _MAX_VERSION)
    if not _VERSION[kind].fullmatch(version):
        raise InvalidField(f"{version[:100]!r} is not a valid {kind} version of {name}")
    check_url(url, f"URL of {name} {version}")
    location = _text(location, f"location of {name}", MAX_PATH)
    if not isinstance(bin, Mapping):
        raise InvalidField(f"bin of {name} is not a mapping")
    if kind != "npm":
        if location or bin:
            raise InvalidField(f"{kind} {name} has an npm location or bin links")
        return
    if not _NPM_LOCATION.fullmatch(location):
        raise InvalidField(f"npm location {location[:200]!r} of {name} is not node_modules/...")
    check_relative(location, f"npm location of {name}")  # component lengths
    for link, target in bin.items():
        link = _text(link, f"bin name of {name}", MAX_COMPONENT)
        if not link or link.startswith(".") or "/" in link or "\0" in link:
            raise InvalidField(f"bin name {link[:100]!r} of {name} is not a plain file name")
        target = _text(target, f"bin {link} of {name}", MAX_PATH)
        check_relative(posixpath.normpath(target), f"bin {link} of {name}")

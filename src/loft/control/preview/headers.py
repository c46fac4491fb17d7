"""What crosses the preview proxy in headers, both ways. Pure.

Toward the workspace (:func:`split_request`): the caller's loft credentials are taken
out (``Authorization: Bearer loft_…``; the ``loft_preview`` cookie), so the preview
origin never receives them; so are hop-by-hop headers (and those ``Connection`` names)
and any ``Forwarded``/``X-Forwarded-*`` a client made up, which the proxy sets itself.
Any other ``Authorization`` (the application's own) passes.

Toward the client (:func:`clean_response`): hop-by-hop headers go, and so does a
``Set-Cookie`` of ``loft_preview`` (a workspace must not replace the proxy's cookie).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loft.control.accounts import parse_token
from loft.control.preview.grants import COOKIE_NAME

__all__ = ["HOP_BY_HOP", "Header", "Split", "clean_response", "split_request", "upgrade_of"]

Header = tuple[bytes, bytes]
#: Headers of one connection, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
_MADE_UP = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
_COOKIE_PAIR = re.compile(rb"\s*([^=;\s]+)\s*=\s*([^;]*?)\s*(?:;|$)")


@dataclass(frozen=True, slots=True)
class Split:
    """A request's headers to forward, and the loft credentials taken out of it."""

    forward: list[Header]
    token: str | None
    cookie: str | None


def _named(headers: list[Header], name: bytes) -> set[bytes]:
    out: set[bytes] = set()
    for k, v in headers:
        if k == name:
            out |= {t.strip().lower() for t in v.split(b",") if t.strip()}
    return out


def upgrade_of(headers: list[Header]) -> bytes | None:
    """The protocol a request asks to switch to (``websocket``), if it asks properly."""
    if b"upgrade" not in _named(headers, b"connection"):
        return None
    wanted = _named(headers, b"upgrade")
    return b"websocket" if b"websocket" in wanted else None


def _without_loft_cookie(value: bytes) -> tuple[bytes, str | None]:
    kept, found = [], None
    for m in _COOKIE_PAIR.finditer(value):
        if m.group(1) == COOKIE_NAME.encode():
            found = m.group(2).decode("ascii", "replace")
        else:
            kept.append(m.group(0).strip().rstrip(b";"))
    return b"; ".join(kept), found


def split_request(headers: list[Header]) -> Split:
    """Headers to forward (hop-by-hop and made-up forwarding headers dropped), and the
    loft token and preview cookie taken out of them."""
    listed = _named(headers, b"connection")
    token = cookie = None
    out: list[Header] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in _MADE_UP or name in listed:
            continue
        if name == b"authorization":
            scheme, _, cred = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and parse_token(cred.strip()) is not None:
                token = cred.strip()
                continue
        if name == b"cookie":
            value, found = _without_loft_cookie(value)
            cookie = found if found is not None else cookie
            if not value:
                continue
        out.append((name, value))
    return Split(out, token, cookie)


def clean_response(headers: list[Header]) -> list[Header]:
    """A workspace's response headers fit for the client."""
    listed = _named(headers, b"connection")
    prefix = COOKIE_NAME.encode() + b"="
    return [
        (k, v)
        for k, v in headers
        if k not in HOP_BY_HOP
        and k not in listed
        and not (k == b"set-cookie" and v.lstrip().startswith(prefix))
    ]

"""Signed, expiring grants to one preview host: the login *ticket* an API call hands out
(a minute, in a URL) and the *cookie* the proxy exchanges it for (hours, ``HttpOnly``,
host-only so no other preview host gets it). Pure: the key and the time come in.

A grant is ``base64url(kind.label.user.token.expires).base64url(HMAC-SHA256)``. It names
the token it was made with, so revoking that token ends every cookie it made (the proxy
checks the token is live); ``token`` is empty for root over the local socket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COOKIE_NAME",
    "DEFAULT_COOKIE_TTL",
    "MAX_GRANT",
    "TICKET_TTL",
    "Grant",
    "GrantSigner",
]

#: The preview cookie's name (never forwarded to the workspace).
COOKIE_NAME = "loft_preview"
#: Seconds a login ticket may be used.
TICKET_TTL = 60.0
#: Seconds a preview cookie lasts unless configured.
DEFAULT_COOKIE_TTL = 8 * 3600.0
#: The longest grant looked at.
MAX_GRANT = 400
_PAYLOAD = re.compile(
    r"(ticket|cookie)\.([0-9]{1,5}--[a-z0-9]{6,32})\.([0-9]{1,18})\.([0-9a-f]{0,16})\.([0-9]{1,12})"
)

Kind = Literal["ticket", "cookie"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Who (``user`` id, through ``token``) may open preview host ``label`` until
    ``expires`` (epoch seconds)."""

    kind: Kind
    label: str
    user: int
    token: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantSigner:
    """Signs and checks grants with one deployment's key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"loft-preview-v1\0" + payload, hashlib.sha256).digest()

    def sign(self, grant: Grant) -> str:
        """The grant's text."""
        payload = f"{grant.kind}.{grant.label}.{grant.user}.{grant.token}.{grant.expires}"
        raw = payload.encode()
        return f"{_b64(raw)}.{_b64(self._mac(raw))}"

    def verify(self, text: str, kind: Kind, label: str, now: float) -> Grant | None:
        """The grant ``text`` carries if it is genuine, of ``kind``, for ``label`` and not
        expired; else None (never why: all are one answer)."""
        if len(text) > MAX_GRANT:
            return None
        body, _, mac = text.partition(".")
        try:
            raw, sig = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(sig, self._mac(raw)):
            return None
        m = _PAYLOAD.fullmatch(raw.decode("ascii", "replace"))
        if m is None or m.group(1) != kind or m.group(2) != label:
            return None
        grant = Grant(kind, label, int(m.group(3)), m.group(4), int(m.group(5)))
        return grant if grant.expires > now else None

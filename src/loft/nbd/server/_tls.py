"""TLS for NBD over TCP: the server context and the client's identity."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["make_server_ssl_context", "peer_identity"]


def make_server_ssl_context(
    cert: str | Path, key: str | Path, ca: str | Path | None = None
) -> ssl.SSLContext:
    """A TLS server context; with ``ca``, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    if ca is not None:
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_identity(peercert: dict[str, Any] | None) -> str | None:
    """The commonName of a verified peer certificate, or None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None

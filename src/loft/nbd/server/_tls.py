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
    """A TCP client's identity: the one commonName (CN) attribute of its verified
    certificate's subject, or None.

    Exactly one non-empty CN makes an identity. A subject without a CN (``/O=SomeOrg``, a
    certificate naming itself only in subjectAltName) or with several CNs (in one RDN or
    in several, which readers disagree on the order of) has none, and a client without an
    identity is refused every export: absence of an identity never means trust (trust
    comes from the listener, see :class:`~loft.nbd.server.Negotiation`). subjectAltName
    and every other field are ignored."""
    if not peercert:
        return None
    names = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        return None
    return names[0]

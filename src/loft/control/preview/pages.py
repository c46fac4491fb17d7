"""The proxy's own answers: small HTML pages that say what happened and what to do
(a browser shows them; a script reads the status and ``X-Loft-Error``)."""

from __future__ import annotations

import html

__all__ = ["Page", "page"]

#: (status, headers, body)
Page = tuple[int, list[tuple[bytes, bytes]], bytes]

_TITLES = {
    400: "Bad request",
    401: "Sign in to preview this workspace",
    403: "Not your workspace",
    404: "No such preview",
    405: "Method not allowed",
    429: "Too many wakes",
    431: "Request headers too large",
    502: "Nothing answers on this port",
    503: "The node is not answering",
    504: "The workspace did not wake in time",
}


def page(status: int, message: str, hint: str | None = None, **extra: str) -> Page:
    """An HTML page for ``status`` with ``message`` and ``hint`` (escaped)."""
    title = _TITLES.get(status, "Error")
    body = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{status} {html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        + (f"<p>{html.escape(hint)}</p>" if hint else "")
        + "<hr><p>loft preview</p></body></html>\n"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-loft-error", message.encode("ascii", "replace")[:200]),
    ]
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return status, headers, body

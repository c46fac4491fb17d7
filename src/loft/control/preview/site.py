"""Where the preview origin is, as the API tells clients: its domain, scheme and port,
and how long its cookies last."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from loft.control.preview.grants import DEFAULT_COOKIE_TTL
from loft.control.preview.host import DEFAULT_DOMAIN, preview_label, preview_origin

__all__ = ["LOGIN_PATH", "PreviewSite"]

#: The proxy's own path on every preview host (a workspace's server never sees it).
LOGIN_PATH = "/__loft/login"


@dataclass(frozen=True, slots=True)
class PreviewSite:
    """The preview origin of one control plane."""

    domain: str = DEFAULT_DOMAIN
    scheme: str = "http"
    port: int = 7071
    cookie_ttl: float = DEFAULT_COOKIE_TTL

    def url(self, port: int, workspace: str) -> str:
        """The address of ``port`` of ``workspace`` (by id)."""
        label = preview_label(port, workspace)
        return preview_origin(label, self.domain, self.scheme, self.port) + "/"

    def login_url(self, port: int, workspace: str, ticket: str) -> str:
        """The address that exchanges ``ticket`` for the preview's cookie."""
        return (
            self.url(port, workspace).rstrip("/") + LOGIN_PATH + "?" + urlencode({"ticket": ticket})
        )

"""Previews (``POST /v1/workspaces/{name}/preview``): a port of a workspace on the
preview origin, ``http://PORT--ID.DOMAIN:PROXYPORT/``.

A private preview needs the owner's token (``Authorization: Bearer``) or a cookie for
that one host; :class:`PreviewAccess` hands out a ``login_url`` that sets it (a signed
ticket, valid for a minute, exchanged by the proxy for a cookie valid ``expires_at``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from loft.api._rules import FORBID_EXTRA, Bool, Float, Rule, Str

__all__ = ["CreatePreview", "PreviewAccess"]


@dataclass(frozen=True, slots=True)
class CreatePreview:
    """Which port of the workspace to open on the preview origin."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    port: Annotated[int, Rule(ge=1, le=65535)]


@dataclass(frozen=True, slots=True)
class PreviewAccess:
    """Where a port is previewed, and how a browser gets in."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    #: the preview's address
    url: Str
    #: opened in a browser, sets the preview's cookie and redirects to ``url``
    login_url: Str
    #: when the cookie (not the login URL, which lasts a minute) stops working
    expires_at: Float
    #: anyone may open it (the workspace's ``preview_public``)
    public: Bool

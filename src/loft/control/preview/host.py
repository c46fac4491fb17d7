"""Preview host names: ``PORT--ID.DOMAIN`` (a workspace's short random id, since names
are only unique per user). Pure, and strict: the ``Host`` header comes from anyone.

``*.localhost`` resolves to loopback in browsers (RFC 6761), so the default domain,
``preview.localhost``, needs no DNS; a deployment sets its own wildcard domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loft.control.errors import Invalid

__all__ = [
    "DEFAULT_DOMAIN",
    "MAX_HOST",
    "PreviewTarget",
    "check_domain",
    "parse_host",
    "preview_label",
    "preview_origin",
]

#: The preview domain unless configured.
DEFAULT_DOMAIN = "preview.localhost"
#: The longest ``Host`` value looked at (a DNS name is at most 253, plus ``:PORT``).
MAX_HOST = 260
#: ``PORT--ID``: a workspace id is lowercase letters and digits (10 today, a letter first).
_LABEL = re.compile(r"([1-9][0-9]{0,4})--([a-z0-9]{6,32})")
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HOST = re.compile(rf"({_DNS_LABEL}(?:\.{_DNS_LABEL})*)(?::([0-9]{{1,5}}))?")


@dataclass(frozen=True, slots=True)
class PreviewTarget:
    """What a preview host names: a port of a workspace (by id), and its first label."""

    port: int
    workspace: str
    label: str


def check_domain(domain: str) -> str:
    """``domain``, lower-cased, if it is a DNS name (else :class:`Invalid`)."""
    d = domain.lower().rstrip(".")
    if len(d) > 200 or not _DOMAIN.fullmatch(d):
        raise Invalid(f"{domain!r} is not a preview domain", hint="e.g. preview.example.com")
    return d


def preview_label(port: int, workspace: str) -> str:
    """The first label of a port's preview host."""
    return f"{port}--{workspace}"


def preview_origin(label: str, domain: str, scheme: str, port: int) -> str:
    """``scheme://label.domain[:port]`` (the port left out when it is the scheme's)."""
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{label}.{domain}" + ("" if port == default else f":{port}")


def parse_host(host: str, domain: str) -> PreviewTarget | None:
    """The target of a ``Host`` value on the preview domain, or None (any other host,
    a malformed one, an IP literal, a port out of range, more than one label before the
    domain)."""
    if len(host) > MAX_HOST:
        return None
    m = _HOST.fullmatch(host.lower())
    if m is None:
        return None
    name = m.group(1)
    if not name.endswith("." + domain):
        return None
    t = _LABEL.fullmatch(name[: -len(domain) - 1])
    if t is None or int(t.group(1)) > 65535:
        return None
    return PreviewTarget(int(t.group(1)), t.group(2), t.group(0))

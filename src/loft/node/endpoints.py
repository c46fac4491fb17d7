"""The deployment's own endpoints, which a ``nat`` workspace must never reach.

The runtime's egress policy refuses the private, loopback, link-local (metadata) and
shared ranges already; a deployment's services may still sit on public addresses: the
catalog's database host, the chunk store's endpoint (an S3 API), and in a fleet the node
and control APIs (``LOFT_EGRESS_DENY``). Their addresses go into every ``nat``
workspace's ``spec.deny``. Names are resolved when the agent starts; an address a name
gains later is not denied until the agent restarts (documented in docs/node-agent.md).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from urllib.parse import parse_qs, urlsplit

from loft.config import Settings

__all__ = ["Network", "deployment_endpoints"]

log = logging.getLogger("loft.node")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _hosts(settings: Settings) -> list[str]:
    hosts = []
    catalog = urlsplit(settings.catalog_url)
    if catalog.hostname and not catalog.scheme.startswith("sqlite"):
        hosts.append(catalog.hostname)
    chunks = urlsplit(settings.chunks_url)
    for endpoint in parse_qs(chunks.query).get("endpoint", []):
        if urlsplit(endpoint).hostname:
            hosts.append(str(urlsplit(endpoint).hostname))
    if chunks.scheme == "s3" and not parse_qs(chunks.query).get("endpoint"):
        hosts.append("s3.amazonaws.com")
    return hosts


def deployment_endpoints(settings: Settings) -> tuple[Network, ...]:
    """Every address of the deployment's endpoints, as host networks, plus the
    networks of ``LOFT_EGRESS_DENY``."""
    found: dict[str, Network] = {}
    for part in filter(None, (p.strip() for p in settings.egress_deny.split(","))):
        net = ipaddress.ip_network(part, strict=False)
        found[str(net)] = net
    for host in _hosts(settings):
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as e:
            log.warning("node.endpoint_unresolved host=%s error=%s", host, json.dumps(str(e)))
            continue
        for info in infos:
            net = ipaddress.ip_network(str(info[4][0]))
            found[str(net)] = net
    return tuple(found.values())

"""The API client every command that goes through the control plane uses: the light
one (standard library only), at the endpoint :func:`loft.client.resolve` finds."""

from __future__ import annotations

from loft.client import Client, resolve

__all__ = ["api"]


def api(timeout: float = 120.0) -> Client:
    """A client of the control plane this command should talk to; ``timeout`` bounds
    each request (seconds)."""
    endpoint = resolve()
    return Client.light(endpoint.url, endpoint.token, ca=endpoint.ca, timeout=timeout)

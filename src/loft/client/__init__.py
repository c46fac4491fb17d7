"""loft's typed Python client of the control plane API (the CLI is its first user)::

    from loft.client import Client
    from loft.api import CreateWorkspace

    with Client("https://loft.example:7070", token) as c:
        c.create_workspace(CreateWorkspace("dev"))
        print(c.exec("dev", ["echo", "hi"]).stdout)

Requests and answers are :mod:`loft.api`'s dataclasses; failures are the exceptions
below (see :mod:`loft.client._errors` for the tree). It imports nothing heavy: httpx
comes in with the first default :class:`Client`, and :meth:`Client.light` needs none.
"""

from __future__ import annotations

from loft.client._client import Client, ExecResult
from loft.client._config import (
    Endpoint,
    forget_login,
    local_socket,
    login_file,
    resolve,
    save_login,
)
from loft.client._errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TransportError,
    Unauthorized,
    Unavailable,
)
from loft.client._transport import HttpxTransport, StdlibTransport, Transport

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "Endpoint",
    "ExecResult",
    "Forbidden",
    "HttpxTransport",
    "Invalid",
    "NotFound",
    "PayloadTooLarge",
    "StdlibTransport",
    "Transport",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "forget_login",
    "local_socket",
    "login_file",
    "resolve",
    "save_login",
]

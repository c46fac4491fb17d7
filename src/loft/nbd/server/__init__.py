"""``loft.nbd.server``: the asyncio NBD server (the nbdkit ``server/`` habit).

It owns sockets, TLS, authorization and concurrency; the wire format is
:mod:`loft.nbd.protocol` and the data comes from :class:`loft.nbd.backends.Backend`.
Split by concern as nbdkit's ``server/`` is: ``_connection`` (transport, batching,
ordering), ``_handshake`` (options, without I/O), ``_dispatch`` (a request against a
backend, without I/O), ``_lane`` (a connection's large WRITEs on a borrowed worker),
``_budget`` (bytes in flight, per connection and per server),
``_validate``, ``_errno``, ``_exports``, ``_tls``, ``_server`` (listeners, workers,
connection caps). Each request is validated once where it arrives, failures become
NBD errnos in one function (:func:`errno_for`, which knows only ``OSError.errno``), and a
failing backend call is an error reply -- never a dead connection or server.
"""

from loft.nbd.server._budget import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CONNECTION_BYTES,
    GUARANTEED_BYTES,
    LARGE_REQUEST,
    ServerBudget,
)
from loft.nbd.server._connection import HANDSHAKE_TIMEOUT, MAX_INFLIGHT, NBDConnection
from loft.nbd.server._dispatch import SPARSE_READ_MIN, execute
from loft.nbd.server._errno import errno_for
from loft.nbd.server._exports import Authorizer, Export, ExportLookup, ExportRegistry, load_authz
from loft.nbd.server._handshake import MAX_OPTIONS, Negotiation
from loft.nbd.server._server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_WORKERS,
    NBDServer,
)
from loft.nbd.server._tls import make_server_ssl_context, peer_identity
from loft.nbd.server._validate import ExportView, validate_request

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTION_BYTES",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_WORKERS",
    "GUARANTEED_BYTES",
    "HANDSHAKE_TIMEOUT",
    "LARGE_REQUEST",
    "MAX_INFLIGHT",
    "MAX_OPTIONS",
    "SPARSE_READ_MIN",
    "Authorizer",
    "Export",
    "ExportLookup",
    "ExportRegistry",
    "ExportView",
    "NBDConnection",
    "NBDServer",
    "Negotiation",
    "ServerBudget",
    "errno_for",
    "execute",
    "load_authz",
    "make_server_ssl_context",
    "peer_identity",
    "validate_request",
]

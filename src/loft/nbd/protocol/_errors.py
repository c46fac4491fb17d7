"""Protocol errors, split by whose fault they are (the h11 habit).

::

    LoftError
     +-- NBDError
          +-- ProtocolError
               +-- LocalProtocolError    the caller misused this library
               +-- RemoteProtocolError   the peer sent bytes that break the protocol
"""

from __future__ import annotations

from loft.errors import LoftError

__all__ = ["LocalProtocolError", "NBDError", "ProtocolError", "RemoteProtocolError"]


class NBDError(LoftError):
    """Root of every error raised by :mod:`loft.nbd`."""


class ProtocolError(NBDError):
    """The NBD conversation cannot go on."""


class LocalProtocolError(ProtocolError):
    """This side tried something the protocol does not allow in the current state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent data that violates the protocol; the connection must be dropped."""

"""The control plane's errors, each with the HTTP status it is answered with.

Everything a request can fail with is one of these (or a :class:`~loft.errors.LoftError`
from below, mapped by :func:`status_of`), answered as ``{"error", "hint"}``::

    LoftError
     +-- ApiError                 500 unless a subclass says
          +-- BadRequest          400  the request makes no sense as a whole
          +-- Unauthorized        401  no token, or not a live one
          +-- Forbidden           403  an admin's operation
          |    +-- QuotaExceeded  403  over one of the caller's quotas
          +-- NotFound            404  unknown, or someone else's (never told apart)
          +-- Conflict            409  a name taken, a state that does not allow it
          |    +-- NotListening   409  nothing listens on that port in the workspace
          +-- PayloadTooLarge     413  a request body over its limit
          +-- Invalid             422  a field out of its rules
          +-- TooManyRequests     429  over a rate limit (``retry_after`` seconds)
          +-- Unimplemented       501  defined, not served yet
          +-- NodeUnavailable     503  the node agent did not answer in time, or refused
          |                            to talk; the catalog being unreachable is 503 too
          +-- WakeTimeout         504  a woken workspace's server did not listen in time

A node client (:mod:`loft.control.nodeclient`) raises these same types, so a node's
answer maps to a status in one place.
"""

from __future__ import annotations

from typing import ClassVar

from loft.catalog import CatalogError
from loft.errors import LoftError

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NodeUnavailable",
    "NotFound",
    "NotListening",
    "PayloadTooLarge",
    "QuotaExceeded",
    "TooManyRequests",
    "Unauthorized",
    "Unimplemented",
    "WakeTimeout",
    "status_of",
]


class ApiError(LoftError):
    """An error answered with :attr:`status`."""

    status: ClassVar[int] = 500


class BadRequest(ApiError):
    """The request makes no sense as a whole (each field may be fine)."""

    status = 400


class Unauthorized(ApiError):
    """No bearer token, or one that is unknown or revoked (never said which)."""

    status = 401


class Forbidden(ApiError):
    """The caller may not do this (an admin's operation)."""

    status = 403


class QuotaExceeded(Forbidden):
    """The operation would take the caller over one of their quotas."""


class NotFound(ApiError):
    """No such thing, or it is someone else's: the answer is the same."""

    status = 404


class Conflict(ApiError):
    """A name already taken, or a state that does not allow the operation."""

    status = 409


class NotListening(Conflict):
    """The workspace runs, but nothing accepts connections on that port (yet: a server
    that a start or wake launched may still be coming up)."""


class PayloadTooLarge(ApiError):
    """A request body over its limit."""

    status = 413


class Invalid(ApiError):
    """A field outside its rules."""

    status = 422


class TooManyRequests(ApiError):
    """Over a rate limit; worth trying again in :attr:`retry_after` seconds."""

    status = 429

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class Unimplemented(ApiError):
    """Defined in the API, not served by this version."""

    status = 501


class NodeUnavailable(ApiError):
    """The node agent did not answer in time, or could not be reached."""

    status = 503


class WakeTimeout(ApiError):
    """A workspace was woken, but its server did not accept connections in time."""

    status = 504


def status_of(error: LoftError) -> int:
    """The HTTP status an error is answered with: its own for an :class:`ApiError`, 503
    when the catalog is unreachable, 500 for anything else from below (a bug to fix)."""
    if isinstance(error, ApiError):
        return error.status
    if isinstance(error, CatalogError):
        return 503
    return 500

"""The client's exceptions: whatever the transport or the server says is translated
into one of these where it enters (httpx's, ``http.client``'s and ``OSError``s
included)::

    LoftError
     +-- ClientError
          +-- TransportError          the API could not be reached, or broke off
          +-- ApiError                the API answered an error: .status .error .hint
               +-- BadRequest         400
               +-- Unauthorized       401
               +-- Forbidden          403 (QuotaExceeded's status too)
               +-- NotFound           404
               +-- Conflict           409
               +-- PayloadTooLarge    413
               +-- Invalid            422
               +-- Unavailable        503 (and any other 5xx)
"""

from __future__ import annotations

from loft.errors import LoftError

__all__ = [
    "ApiError",
    "BadRequest",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "PayloadTooLarge",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "error_for",
]


class ClientError(LoftError):
    """Any failure of a client call."""


class TransportError(ClientError):
    """The API could not be reached, or the connection broke off."""


class ApiError(ClientError):
    """The API answered with an error."""

    def __init__(self, status: int, error: str, hint: str | None = None) -> None:
        super().__init__(error, hint=hint)
        self.status = status
        self.error = self.message


class BadRequest(ApiError):
    """400: the request makes no sense as a whole."""


class Unauthorized(ApiError):
    """401: no token, or not a live one."""


class Forbidden(ApiError):
    """403: an admin's operation, or over a quota."""


class NotFound(ApiError):
    """404: no such thing, or not yours."""


class Conflict(ApiError):
    """409: a name taken, or a state that does not allow it."""


class PayloadTooLarge(ApiError):
    """413: the request body is over its limit."""


class Invalid(ApiError):
    """422: a field outside its rules."""


class Unavailable(ApiError):
    """5xx: the service or its node could not do it now."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Invalid,
}


def error_for(status: int, error: str, hint: str | None) -> ApiError:
    """The exception of an error answer."""
    cls = _BY_STATUS.get(status) or (Unavailable if status >= 500 else ApiError)
    return cls(status, error, hint)

"""The root of loft's exception hierarchy.

Every error a user can cause derives from :class:`LoftError` and carries a one-line
message plus an optional operator hint; the CLI prints ``message`` (and ``hint``) on
stderr and exits non-zero. Each package defines its own subclasses::

    LoftError
     +-- CatalogError            (loft.catalog)
     +-- ObjectStoreError        (loft.objstore)
     |    +-- ObjectNotFound
     +-- BlockstoreError         (loft.blockstore)
     |    +-- ChunkNotFound (also an ObjectNotFound), VolumeNotFound, LeaseLost, ...
     +-- EnvstoreError           (loft.envstore)
     +-- IsolationError          (loft.isolation)
     +-- NBDError                (loft.nbd)
"""

from __future__ import annotations

import re

#: A URL's password: ``scheme://user:PASSWORD@host`` (the catalog's PostgreSQL URL, an
#: S3 endpoint with credentials in it).
_USERINFO_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@'\"]*:)[^\s/@'\"]*@")
#: A secret passed as a URL query parameter (libpq's ``?password=``, signed URLs).
_SECRET_PARAMETER = re.compile(
    r"([?&](?:password|passwd|pwd|secret|token|sig|signature|x-amz-signature|"
    r"aws_secret_access_key|secret_key|access_key)=)[^&\s'\"]*",
    re.IGNORECASE,
)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with every password or secret found in URLs in it replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO_PASSWORD.sub(rf"\1{REDACTED}@", text)
    return _SECRET_PARAMETER.sub(rf"\1{REDACTED}", text)


class LoftError(Exception):
    """An error with a message meant for people, and an optional hint on what to do.

    Messages and hints never carry secrets: a URL's password is redacted here, whatever
    raised the error (a catalog URL, an S3 endpoint, a driver's message quoting them)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = redact(message)
        hint = redact(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

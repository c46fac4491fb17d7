"""The one place where a failure becomes an NBD error number.

Only the spec's values ever reach the wire: a raw host errno or an unknown exception
becomes EIO.
"""

from __future__ import annotations

import errno as _os_errno

from loft.blockstore.errors import (
    BlockstoreError,
    InvalidArgument,
    LeaseLost,
    NotFast,
    ReadOnlyVolume,
)
from loft.nbd.backends.base import BackendError
from loft.nbd.protocol import Errno

__all__ = ["errno_for"]

_OS_ERRNO: dict[int, Errno] = {
    _os_errno.EPERM: Errno.EPERM,
    _os_errno.EACCES: Errno.EPERM,
    _os_errno.EROFS: Errno.EPERM,
    _os_errno.ENOSPC: Errno.ENOSPC,
    _os_errno.EDQUOT: Errno.ENOSPC,
    _os_errno.EFBIG: Errno.ENOSPC,
    _os_errno.ENOMEM: Errno.ENOMEM,
    _os_errno.EINVAL: Errno.EINVAL,
    _os_errno.EOPNOTSUPP: Errno.ENOTSUP,
    _os_errno.EOVERFLOW: Errno.EOVERFLOW,
    _os_errno.ESHUTDOWN: Errno.ESHUTDOWN,
}


def errno_for(exc: BaseException) -> Errno:
    """Map a backend failure to the NBD errno sent to the client."""
    if isinstance(exc, BackendError):
        return exc.errno
    if isinstance(exc, BlockstoreError):
        if isinstance(exc, ReadOnlyVolume):
            return Errno.EPERM
        if isinstance(exc, NotFast):
            return Errno.ENOTSUP
        if isinstance(exc, LeaseLost):
            # The lease is gone: this server may no longer serve the volume.
            return Errno.ESHUTDOWN
        if isinstance(exc, InvalidArgument):
            return Errno.EINVAL
        return Errno.EIO
    if isinstance(exc, OSError):
        return _OS_ERRNO.get(exc.errno or 0, Errno.EIO)
    if isinstance(exc, MemoryError):
        return Errno.ENOMEM
    return Errno.EIO

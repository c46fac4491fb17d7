"""The one place where a failure becomes an NBD error number.

The core knows only errno (nbdkit's habit): a backend fails by raising an ``OSError``
(:class:`~loft.nbd.backends.BackendError` is one) whose errno says how; translating its
own storage's exceptions is the backend's job. Only the spec's values ever reach the
wire: an errno the spec lacks, or any other exception, becomes EIO.
"""

from __future__ import annotations

import errno as _os_errno

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
    if isinstance(exc, OSError):
        return _OS_ERRNO.get(exc.errno or 0, Errno.EIO)
    if isinstance(exc, MemoryError):
        return Errno.ENOMEM
    return Errno.EIO

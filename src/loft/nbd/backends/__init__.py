"""What an NBD export serves. :class:`Backend` is the interface (a table of data
methods plus ``can_*`` capabilities, the nbdkit plugin habit); ``file`` serves a raw or
sparse image file, ``volume`` a loft volume."""

from loft.nbd.backends.base import Backend, BackendError, BlockSizes

__all__ = ["Backend", "BackendError", "BlockSizes"]

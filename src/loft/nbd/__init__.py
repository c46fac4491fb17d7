"""NBD for loft: a pure protocol library and the asyncio server that exposes volumes.

* :mod:`loft.nbd.protocol` -- sans-I/O encode/decode of the whole handshake and
  transmission phase (no sockets, so it can be fuzzed alone).
* :mod:`loft.nbd.server` -- the asyncio (uvloop) server: sockets, TLS, authorization,
  request validation and concurrency, on top of the protocol.
* :mod:`loft.nbd.backends` -- what an export serves: a raw file, or a loft volume.
"""

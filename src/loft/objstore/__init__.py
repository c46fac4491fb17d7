"""``loft.objstore``: flat key -> bytes stores of immutable objects (a local directory,
any S3 API, memory), behind one small interface with one conformance suite
(litestream's ``ReplicaClient`` habit). The blockstore keeps its chunks in one; the env
store's binary cache can live in one."""

from loft.objstore.store import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PARALLELISM,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    open_object_store,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_OPERATION_TIMEOUT",
    "DEFAULT_PARALLELISM",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "open_object_store",
]

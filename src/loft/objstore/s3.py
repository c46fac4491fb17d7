"""An object store on any S3 API (AWS S3, GCS interop, Ceph RGW, MinIO, SeaweedFS).

Keys live under an optional prefix in one bucket: ``s3://bucket/some/prefix`` stores the key
``chunks/ab/ab12...`` as the object ``some/prefix/chunks/ab/ab12...``. Addressing is
path-style, so any endpoint works without wildcard DNS.

Every call is bounded. Each HTTP attempt is bounded by the connect and read timeouts, and
a retry is only started when it can finish before the operation's deadline
(``operation_timeout``, all retries included), so an unreachable or stalled endpoint
surfaces as :class:`ObjectStoreError` instead of hanging the caller. Errors from boto3 are
translated into loft's exceptions here, at the edge, and nowhere else.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from loft.errors import redact
from loft.objstore.store import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PARALLELISM,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
)
from loft.priority import PriorityPools

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REGION",
    "S3ObjectStore",
]

#: Seconds a single HTTP attempt may wait for the server between bytes. Values are at
#: most ~5 MiB, so a healthy server never goes quiet this long.
DEFAULT_READ_TIMEOUT = 5.0
#: HTTP attempts per operation (the first one plus retries), botocore "standard" mode.
DEFAULT_MAX_ATTEMPTS = 3
#: Region used for signing when neither the URL nor the environment names one.
DEFAULT_REGION = "us-east-1"
#: The S3 API's limit of keys per DeleteObjects request.
_DELETE_BATCH = 1000

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "403",
        "Forbidden",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and that they "
    "may read and write the bucket"
)
_UNREACHABLE_HINT = "check that the object store is running and the URL's endpoint= is right"
_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    ResponseStreamingError,
)

T = TypeVar("T")


class _DeadlineExceeded(Exception):
    """Raised inside botocore (before-send hook) to stop a retry that would overrun."""


class S3ObjectStore:
    """Objects in an S3 bucket under a key prefix; one thread-safe client, a worker pool."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        create_bucket: bool = True,
        parallelism: int = DEFAULT_PARALLELISM,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        list_page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ObjectStoreError(
                "S3 object store URL names no bucket", hint="use s3://bucket/prefix"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        self.region = region or DEFAULT_REGION
        self.create_bucket = create_bucket
        self.operation_timeout = operation_timeout
        self.list_page_size = list_page_size
        # An attempt may take this long at most (connect, then the server's silence).
        self._attempt_budget = connect_timeout + read_timeout
        # For messages and listings: an endpoint's password never shows (percent-encoded
        # in a query, it would escape loft.errors.redact).
        query = {"endpoint": redact(endpoint)} if endpoint else {}
        if region:
            query["region"] = region
        if not create_bucket:
            query["create_bucket"] = "0"
        self.url = f"s3://{bucket}/{self.prefix.rstrip('/')}" + (
            f"?{urlencode(query)}" if query else ""
        )
        self._local = threading.local()
        self._bucket_ready = threading.Event()
        self._bucket_lock = threading.Lock()
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            region_name=self.region,
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # One connection per worker (foreground and background pools: see
            # PriorityPools) plus the callers' own threads.
            max_pool_connections=2 * parallelism + 2,
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            # Flexible checksums are not implemented by every S3 API server; keep to the
            # classic protocol that all of them speak.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )
        try:
            self._client: S3Client = session.client("s3", endpoint_url=endpoint, config=config)
        except (BotoCoreError, ValueError) as e:
            raise ObjectStoreError(f"cannot set up S3 client for {self.url}: {e}") from e
        self._client.meta.events.register("before-send.s3", self._check_deadline)
        # Transfers run at their caller's priority: a commit's uploads in the background.
        self._pool = PriorityPools(parallelism, "s3store")

    @classmethod
    def from_url(cls, url: str) -> S3ObjectStore:
        """Open ``s3://bucket/prefix?endpoint=http://host:port[&region=R][&create_bucket=0]``.

        Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
        AWS_SESSION_TOKEN); the region from the URL, AWS_REGION or AWS_DEFAULT_REGION,
        else us-east-1. Without credentials in the environment, boto3's usual chain
        (config files, profiles) is consulted.
        """
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ObjectStoreError(
                f"bad S3 object store URL {url!r}",
                hint="use s3://bucket/prefix?endpoint=http://host:port",
            )
        query = parse_qs(parts.query)
        known = {"endpoint", "region", "create_bucket"}
        unknown = set(query) - known
        if unknown:
            raise ObjectStoreError(
                f"unknown option(s) {', '.join(sorted(unknown))} in S3 object store URL {url!r}",
                hint="known options: endpoint, region, create_bucket",
            )

        def option(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        create = (option("create_bucket") or "1").lower() not in ("0", "false", "no")
        region = option("region") or os.environ.get("AWS_REGION")
        region = region or os.environ.get("AWS_DEFAULT_REGION")
        return cls(
            parts.netloc,
            parts.path,
            endpoint=option("endpoint"),
            region=region,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            create_bucket=create,
        )

    # -- plumbing -------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid key {key!r}")
        return self.prefix + key

    def _check_deadline(self, request: Any, **_: Any) -> None:
        """botocore before-send hook: refuse a retry that could not finish in time."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return
        attempt = request.context.get("retries", {}).get("attempt", 1)
        if attempt > 1 and time.monotonic() + self._attempt_budget > deadline:
            raise _DeadlineExceeded()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation (with botocore's retries) under the operation deadline.

        A failure while reading a response body is retried here too, since botocore's
        retries end when the headers arrive.
        """
        deadline = time.monotonic() + self.operation_timeout
        self._local.deadline = deadline
        try:
            while True:
                try:
                    return fn()
                except (ResponseStreamingError, ReadTimeoutError, ConnectionClosedError) as e:
                    if time.monotonic() + self._attempt_budget > deadline:
                        raise self._translate(what, e) from e
                except (BotoCoreError, ClientError, _DeadlineExceeded) as e:
                    raise self._translate(what, e) from e
        finally:
            self._local.deadline = None

    def _translate(self, what: str, e: BaseException) -> ObjectStoreError:
        where = f"S3 endpoint {self.endpoint or 'default AWS'}"
        if isinstance(e, _DeadlineExceeded):
            return ObjectStoreError(
                f"{what}: no answer from {where} within {self.operation_timeout:g} s",
                hint=_UNREACHABLE_HINT,
            )
        if isinstance(e, _CONNECTION_ERRORS):
            return ObjectStoreError(f"{what}: cannot reach {where}: {e}", hint=_UNREACHABLE_HINT)
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return ObjectStoreError(f"{what}: no S3 credentials found", hint=_CREDENTIALS_HINT)
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _CREDENTIAL_CODES:
                return ObjectStoreError(
                    f"{what}: {where} rejected the credentials ({code})", hint=_CREDENTIALS_HINT
                )
            if code == "NoSuchBucket":
                return ObjectStoreError(
                    f"{what}: bucket {self.bucket!r} does not exist at {where}",
                    hint="create it, or drop create_bucket=0 from the store URL",
                )
            return ObjectStoreError(f"{what}: {where} answered {code or 'an error'}: {e}")
        return ObjectStoreError(f"{what}: S3 request failed: {e}")

    @staticmethod
    def _code(e: ClientError) -> str:
        return str(e.response.get("Error", {}).get("Code", ""))

    def _ensure_bucket(self) -> None:
        """Check the bucket once per store (and create it when allowed)."""
        if self._bucket_ready.is_set():
            return
        with self._bucket_lock:
            if self._bucket_ready.is_set():
                return
            self._call("open bucket", self._head_or_create_bucket)
            self._bucket_ready.set()

    def _head_or_create_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if self._code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not self.create_bucket:
            raise ObjectStoreError(
                f"bucket {self.bucket!r} does not exist at S3 endpoint "
                f"{self.endpoint or 'default AWS'}",
                hint="create it, or drop create_bucket=0 from the store URL",
            )
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            # Another process won the race to create it: fine.
            if self._code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # -- the ObjectStore protocol ------------------------------------------------------------

    def put(self, key: str, value: bytes | bytearray) -> None:
        """Store ``value`` under ``key``; a single PUT is atomic in S3."""
        self._ensure_bucket()
        name = self._key(key)
        self._call(
            f"put {key}",
            lambda: self._client.put_object(Bucket=self.bucket, Key=name, Body=_body(value)),
        )

    def _get_one(self, key: str) -> bytes:
        name = self._key(key)

        def fetch() -> bytes:
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if self._code(e) in _NOT_FOUND_CODES:
                    raise ObjectNotFound(key) from None
                raise
            body = resp["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            expected = resp.get("ContentLength")
            if expected is not None and len(data) != expected:
                raise ResponseStreamingError(error=f"short read: {len(data)} of {expected} bytes")
            return data

        return self._call(f"get {key}", fetch)

    def get(self, key: str) -> bytes:
        """Return the value under ``key``; :class:`ObjectNotFound` if absent."""
        self._ensure_bucket()
        return self._get_one(key)

    def _stat_one(self, key: str) -> ObjectInfo | None:
        name = self._key(key)

        def head() -> ObjectInfo | None:
            try:
                resp = self._client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if self._code(e) in _NOT_FOUND_CODES:
                    return None
                raise
            return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

        return self._call(f"stat {key}", head)

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's size and LastModified, or None when absent."""
        self._ensure_bucket()
        return self._stat_one(key)

    def touch(self, key: str) -> bool:
        """Refresh LastModified by copying the object onto itself; False when absent."""
        self._ensure_bucket()
        name = self._key(key)

        def copy() -> bool:
            try:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=name,
                    CopySource={"Bucket": self.bucket, "Key": name},
                    # S3 refuses a copy onto itself that changes nothing; REPLACE is a change.
                    MetadataDirective="REPLACE",
                )
            except ClientError as e:
                if self._code(e) in _NOT_FOUND_CODES:
                    return False
                raise
            return True

        return self._call(f"touch {key}", copy)

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray]]) -> None:
        """Upload several values in parallel; raises the first failure."""
        self._ensure_bucket()
        for _ in self._pool.map(lambda kv: self.put(*kv), items):
            pass

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Fetch several values in parallel; :class:`ObjectNotFound` if any is absent."""
        self._ensure_bucket()
        return dict(zip(keys, self._pool.map(self._get_one, keys), strict=True))

    def stat_many(self, keys: Sequence[str]) -> dict[str, ObjectInfo | None]:
        """``stat`` for several keys in parallel."""
        self._ensure_bucket()
        return dict(zip(keys, self._pool.map(self._stat_one, keys), strict=True))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete in DeleteObjects batches of up to 1000 keys; absent keys are fine."""
        self._ensure_bucket()
        names = [self._key(k) for k in dict.fromkeys(keys)]
        batches = [names[i : i + _DELETE_BATCH] for i in range(0, len(names), _DELETE_BATCH)]

        def delete(batch: list[str]) -> None:
            resp = self._call(
                f"delete {len(batch)} objects",
                lambda: self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": n} for n in batch], "Quiet": True},
                ),
            )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"could not delete {len(errors)} object(s), first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
                )

        for _ in self._pool.map(delete, batches):
            pass

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``; lists only that prefix."""
        self._ensure_bucket()
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
        )
        strip = len(self.prefix)
        while True:
            page = self._call(f"list {prefix!r}", lambda: next(pages, None))
            if page is None:
                return
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][strip:], int(obj["Size"]), obj["LastModified"].timestamp()
                )

    def close(self) -> None:
        """Stop the worker threads and close the client's connections."""
        self._pool.shutdown(wait=True)
        self._client.close()


def _body(value: bytes | bytearray) -> bytes:
    """A PUT's body as it is: botocore takes a bytearray too (its type stubs say bytes),
    so a commit's 4 MiB value is not copied once more."""
    return cast(bytes, value)

"""S3ObjectStore under faults: nothing listening, a stalled server, errors, wrong credentials,
a missing bucket, and a SeaweedFS killed mid-test. Every failure must be a ObjectStoreError
with a useful message, and must arrive within a bounded time."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from loft.objstore import ObjectNotFound, ObjectStoreError, open_object_store
from loft.objstore.s3 import S3ObjectStore
from services import SeaweedFS, free_port, start_seaweedfs

pytestmark = pytest.mark.timeout(120)

CREDS = {"AWS_ACCESS_KEY_ID": "loft-test", "AWS_SECRET_ACCESS_KEY": "secret"}


def timed(fn: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``fn`` and return (the exception it raised or None, seconds it took)."""
    start = time.monotonic()
    try:
        fn()
    except BaseException as e:
        return e, time.monotonic() - start
    return None, time.monotonic() - start


@pytest.fixture
def fake_creds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("fake_creds")
def test_unreachable_endpoint_fails_fast() -> None:
    port = free_port()  # nothing listens here
    store = open_object_store(f"s3://bucket/prefix?endpoint=http://127.0.0.1:{port}")
    try:
        for call in (
            lambda: store.put("k", b"v"),
            lambda: store.get("k"),
            lambda: store.stat("k"),
            lambda: list(store.list("")),
        ):
            err, took = timed(call)
            assert isinstance(err, ObjectStoreError), err
            assert not isinstance(err, ObjectNotFound)
            assert took < 10, f"took {took:.1f} s"
            assert "cannot reach" in str(err)
            assert f"127.0.0.1:{port}" in str(err)
    finally:
        store.close()


@pytest.fixture
def stalled_endpoint() -> Iterator[str]:
    """A port whose kernel accepts connections but whose server never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_stalled_server_is_bounded_by_the_operation_timeout(stalled_endpoint: str) -> None:
    store = S3ObjectStore(
        "bucket",
        endpoint=stalled_endpoint,
        access_key="a",
        secret_key="b",
        read_timeout=1.0,
        connect_timeout=1.0,
        operation_timeout=4.0,
    )
    try:
        err, took = timed(lambda: store.get("k"))
        assert isinstance(err, ObjectStoreError), err
        # Attempts start only when they can end before the deadline (2 s each here).
        assert took <= 4.0 + 0.5, f"took {took:.1f} s"
        assert took >= 1.0  # it did wait for the server at least once
    finally:
        store.close()


class _AlwaysFailing(http.server.BaseHTTPRequestHandler):
    """Answers every request with 500 InternalError (a store in trouble)."""

    requests = 0
    protocol_version = "HTTP/1.1"  # so that ``Expect: 100-continue`` is honoured

    def _fail(self) -> None:
        type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _fail

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_server_errors_are_retried_then_reported() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysFailing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = S3ObjectStore(
        "bucket",
        endpoint=f"http://127.0.0.1:{server.server_address[1]}",
        access_key="a",
        secret_key="b",
        max_attempts=3,
    )
    try:
        _AlwaysFailing.requests = 0
        err, took = timed(lambda: store.put("k", b"v"))
        assert isinstance(err, ObjectStoreError), err
        assert "open bucket" in str(err) and "500" in str(err)  # HEAD carries no error body
        assert _AlwaysFailing.requests == 3  # standard retries, then give up
        assert took < 10
        store._bucket_ready.set()  # now the PUT itself
        _AlwaysFailing.requests = 0
        err, took = timed(lambda: store.put("k", b"v"))
        assert isinstance(err, ObjectStoreError), err
        assert "put k" in str(err) and "InternalError" in str(err)
        assert _AlwaysFailing.requests == 3
        assert took < 10
    finally:
        store.close()
        server.shutdown()
        server.server_close()


def test_wrong_secret_mentions_credentials(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = open_object_store(seaweedfs.fresh_url())
    try:
        for call in (lambda: store.put("k", b"v"), lambda: store.get("k")):
            err, took = timed(call)
            assert isinstance(err, ObjectStoreError), err
            assert "credentials" in str(err)
            assert "AWS_ACCESS_KEY_ID" in str(err)
            assert took < 10
    finally:
        store.close()


def test_unknown_access_key_mentions_credentials(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    store = open_object_store(seaweedfs.fresh_url())
    try:
        with pytest.raises(ObjectStoreError, match="AWS_ACCESS_KEY_ID"):
            store.stat("k")
    finally:
        store.close()


def test_wrong_credentials_after_bucket_check(seaweedfs: SeaweedFS) -> None:
    # The bucket exists (a good store made it); a store with a bad key then fails per call.
    url = seaweedfs.fresh_url()
    good = open_object_store(url)
    good.put("k", b"v")
    good.close()
    bad = S3ObjectStore(
        "loft-test",
        url.split("?")[0].split("/", 3)[3],
        endpoint=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key="wrong",
    )
    bad._bucket_ready.set()  # skip the bucket check to hit the object calls themselves
    try:
        for call in (
            lambda: bad.get("k"),
            lambda: bad.stat("k"),
            lambda: bad.touch("k"),
            lambda: bad.put("k", b"x"),
            lambda: bad.delete_many(["k"]),
            lambda: list(bad.list("")),
        ):
            err, _ = timed(call)
            assert isinstance(err, ObjectStoreError), err
            assert not isinstance(err, ObjectNotFound)
            assert "AWS_SECRET_ACCESS_KEY" in str(err)
    finally:
        bad.close()


def test_missing_bucket_is_created_on_first_use(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.fresh_bucket()
    store = open_object_store(seaweedfs.url(bucket, "p"))
    try:
        store.put("k", b"v")
        assert store.get("k") == b"v"
    finally:
        store.close()
    client = seaweedfs.client()
    try:
        names = {b["Name"] for b in client.list_buckets()["Buckets"]}
        assert bucket in names
        assert client.get_object(Bucket=bucket, Key="p/k")["Body"].read() == b"v"
    finally:
        client.close()


def test_missing_bucket_without_create_is_a_clear_error(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.fresh_bucket()
    store = open_object_store(seaweedfs.url(bucket, "p") + "&create_bucket=0")
    try:
        with pytest.raises(ObjectStoreError, match=f"bucket '{bucket}' does not exist"):
            store.get("k")
    finally:
        store.close()


def test_bad_urls_are_rejected() -> None:
    with pytest.raises(ObjectStoreError, match="bad S3"):
        open_object_store("s3:///no-bucket")
    with pytest.raises(ObjectStoreError, match="unknown option"):
        open_object_store("s3://b/p?endpoint=http://127.0.0.1:1&colour=blue")


@pytest.mark.timeout(180)
def test_seaweedfs_killed_mid_test_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    private = start_seaweedfs()
    try:
        for name, value in private.env().items():
            monkeypatch.setenv(name, value)
        store = open_object_store(private.fresh_url())
        try:
            store.put_many([(f"k{i}", b"v" * 1000) for i in range(8)])
            assert store.get("k0") == b"v" * 1000
            private.kill()  # SIGKILL by PID, mid-session: pooled connections are now dead
            assert not private.running()
            for call in (
                lambda: store.get("k1"),
                lambda: store.put("k9", b"x"),
                lambda: store.stat("k2"),
                lambda: store.touch("k3"),
                lambda: store.get_many([f"k{i}" for i in range(8)]),
                lambda: store.put_many([(f"n{i}", b"x") for i in range(8)]),
                lambda: store.delete_many(["k4"]),
                lambda: list(store.list("k")),
            ):
                err, took = timed(call)
                assert isinstance(err, ObjectStoreError), err
                assert not isinstance(err, ObjectNotFound)
                assert "cannot reach" in str(err)
                assert took < 10, f"took {took:.1f} s"
        finally:
            store.close()
    finally:
        private.stop()

"""Suite-wide settings: deterministic hypothesis, and the shared service fixtures.

Real services, started once per session on first use and stopped by PID (finalizers,
plus an atexit fallback in tests/services.py):

    seaweedfs        (session)  services.SeaweedFS: .endpoint, .access_key, .secret_key, .pid,
                                .url(bucket, prefix), .fresh_url(), .fresh_bucket(), .client(),
                                .env(); AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are exported
                                for the session so s3:// chunk store URLs just work
    s3_url           (function) a fresh ``s3://loft-test/<unique prefix>?endpoint=...``
    postgres         (session)  services.PostgreSQL: .port, .url, .url_for(db),
                                .create_database(name), .drop_database(name)
    postgres_url     (session)  SQLAlchemy URL of the session's shared ``loft`` database
    postgres_db_url  (function) SQLAlchemy URL of a new empty database ``t_<n>``, dropped after
"""

import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "loft",
    derandomize=True,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("loft")

# tests/ is not a package; make tests/services.py importable as ``services``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import PostgreSQL, SeaweedFS, start_postgres, start_seaweedfs  # noqa: E402

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 endpoint for the session; AWS credentials exported to match."""
    server = start_seaweedfs()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env().items():
            mp.setenv(name, value)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_url(seaweedfs: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """A chunk store URL with a prefix no other test uses (named after the test)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:32]
    return seaweedfs.fresh_url(name or "t")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    """A private PostgreSQL server for the session."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgreSQL) -> str:
    """SQLAlchemy URL (postgresql+psycopg) of the session's shared ``loft`` database."""
    return postgres.url


@pytest.fixture
def postgres_db_url(postgres: PostgreSQL) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database for this test only."""
    name = f"t_{next(_db_counter)}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)

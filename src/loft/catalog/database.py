"""Opening the catalog: engines, transactions, the database clock and migrations."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from loft.config import Settings
from loft.datadir import private_database_file
from loft.errors import LoftError

#: The newest migration; a catalog at this revision skips Alembic entirely on open.
HEAD_REVISION = "0008"
_MIGRATIONS = Path(__file__).with_name("migrations")
_SQLITE_BUSY_TIMEOUT_MS = 30_000

log = logging.getLogger("loft.catalog")


class CatalogError(LoftError):
    """The catalog database is unreachable, locked or inconsistent."""


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and pick the psycopg 3 driver for it."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Catalog:
    """The platform's SQL database. SQLite by default (WAL, ``BEGIN IMMEDIATE`` for
    writes), PostgreSQL when the URL says so. Thread-safe; open one per process."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                private_database_file(Path(parsed.database))
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        elif self.dialect == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 3}
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as e:  # bad URLs raise several different types
            raise CatalogError(f"cannot open catalog {url!r}: {e}") from e
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        self._migrate_lock = threading.Lock()
        if migrate:
            self.migrate()

    @classmethod
    def open(cls, settings: Settings) -> Catalog:
        """Open (and migrate) the catalog named by the settings."""
        return cls(settings.catalog_url)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        with self._connect(immediate=False) as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (no upgrade
        deadlocks, and a compare-and-swap reads and writes under one lock)."""
        with self._connect(immediate=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent snapshot of every table
        (REPEATABLE READ on PostgreSQL; a SQLite read transaction always does)."""
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except OperationalError as e:
            raise CatalogError(f"catalog unavailable: {_one_line(e.orig)}") from e

    @contextmanager
    def _connect(self, *, immediate: bool) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                if immediate:
                    conn = conn.execution_options(loft_immediate=True)
                yield conn
        except OperationalError as e:
            raise CatalogError(f"catalog unavailable: {_one_line(e.orig)}") from e

    def now(self, conn: Connection) -> float:
        """The database's clock, seconds since the epoch (leases are judged by it)."""
        return float(conn.execute(text(self.now_sql)).scalar_one())

    @property
    def now_sql(self) -> str:
        """SQL for the database clock, usable inside other statements."""
        if self.dialect == "sqlite":
            return "SELECT (julianday('now') - 2440587.5) * 86400.0"
        return "SELECT extract(epoch from clock_timestamp())::float8"

    def migrate(self) -> None:
        """Bring the schema to the newest revision (cheap when it already is)."""
        with self._migrate_lock:
            current = self._revision()
            if current == HEAD_REVISION:
                return
            # One line for people; Alembic's chatter (its plugins announce themselves on
            # import, then every step) only when debugging.
            if not log.isEnabledFor(logging.DEBUG):
                logging.getLogger("alembic").setLevel(logging.WARNING)
            from alembic import command
            from alembic.config import Config

            log.info("catalog.migrate from=%s to=%s", current or "empty", HEAD_REVISION)

            cfg = Config()
            cfg.set_main_option("script_location", str(_MIGRATIONS))
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    conn = conn.execution_options(loft_immediate=True)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()

    def _revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
                return None if row is None else str(row[0])
        except (OperationalError, DBAPIError) as e:
            if "alembic_version" in str(e.orig):
                return None
            raise CatalogError(
                f"catalog {self.url!r} unavailable: {_one_line(e.orig)}",
                hint="check LOFT_CATALOG_URL and that the database server is running",
            ) from e

    def close(self) -> None:
        """Dispose of pooled connections."""
        self.engine.dispose()


def _one_line(err: BaseException | None) -> str:
    """A driver's error as one line (psycopg's messages span several)."""
    return " ".join(str(err).split())


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We emit BEGIN ourselves so that writes can be BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("loft_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = ["HEAD_REVISION", "Catalog", "CatalogError", "normalize_url"]

"""Catalog migrations on SQLite and PostgreSQL: a new catalog gets the newest schema, an
old one is upgraded with its data, and an up-to-date one is opened without Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect, select, text

from loft.catalog import HEAD_REVISION, Catalog, database
from loft.catalog.database import normalize_url
from loft.catalog.schema import gc_state, inflight_chunks, metadata, settings, volumes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sub' / 'catalog.db'}"
    else:
        yield request.getfixturevalue("postgres_db_url")


def _revision(url: str) -> str | None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_new_catalog_gets_every_table(url: str) -> None:
    cat = Catalog(url)
    try:
        assert _revision(url) == HEAD_REVISION
        insp = inspect(cat.engine)
        for table in metadata.sorted_tables:
            assert insp.has_table(table.name), table.name
            have = {c["name"] for c in insp.get_columns(table.name)}
            assert have == {c.name for c in table.columns}, table.name
        # A chunk key is 74 characters: the registration column must hold it (PostgreSQL
        # enforces VARCHAR lengths, SQLite does not).
        key = "chunks/ab/" + "ab" * 32
        with cat.write() as conn:
            conn.execute(
                text("INSERT INTO commits_inflight (id, volume_id, started_at) VALUES (1, 1, 0)")
            )
            conn.execute(insert(inflight_chunks).values(commit_id=1, key=key))
        with cat.read() as conn:
            assert conn.execute(select(inflight_chunks.c.key)).scalar_one() == key
    finally:
        cat.close()


def test_reopening_is_idempotent_and_keeps_data(url: str) -> None:
    cat = Catalog(url)
    with cat.write() as conn:
        conn.execute(insert(settings).values(key="k", value="v"))
    cat.close()
    again = Catalog(url)
    try:
        with again.read() as conn:
            assert conn.execute(select(settings.c.value)).scalar_one() == "v"
        assert _revision(url) == HEAD_REVISION
    finally:
        again.close()


def test_old_catalog_is_upgraded_with_its_data(url: str) -> None:
    """A catalog created at the first revision is brought to the newest on open."""
    from alembic import command
    from alembic.config import Config

    cat = Catalog(url, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
    with cat.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
    assert _revision(url) == "0001"
    with cat.engine.begin() as conn:
        conn.execute(insert(settings).values(key="old", value="kept"))
    cat.close()

    upgraded = Catalog(url)
    try:
        assert _revision(url) == HEAD_REVISION
        with upgraded.read() as conn:
            assert conn.execute(select(settings.c.value)).scalar_one() == "kept"
        with upgraded.write() as conn:
            conn.execute(
                text("INSERT INTO commits_inflight (id, volume_id, started_at) VALUES (1, 1, 0)")
            )
            conn.execute(insert(inflight_chunks).values(commit_id=1, key="chunks/cd/" + "cd" * 32))
    finally:
        upgraded.close()


def test_unreachable_catalog_is_a_clear_error(tmp_path: Path) -> None:
    from loft.catalog import CatalogError

    with pytest.raises(CatalogError) as info:
        Catalog("postgresql://nobody@127.0.0.1:1/loft")
    assert "\n" not in info.value.message
    assert "unavailable" in info.value.message


def test_upgrade_flags_existing_volumes_raw_written(url: str) -> None:
    """0003: nothing recorded how older volumes were written, so the host must treat
    them as raw-written; volumes created afterwards start unflagged."""
    from alembic import command
    from alembic.config import Config

    from loft.blockstore.heads import Heads

    cat = Catalog(url, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
    with cat.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.commit()
    with cat.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO volumes (uid, name, size, extent_size, durability,"
                " commit_interval, lineage, created_at, root, version, epoch)"
                " VALUES ('ab', 'old', 4096, 65536, 'local', 5, '[]', 0, '00', 0, 0)"
            )
        )
    cat.close()
    upgraded = Catalog(url)
    try:
        heads = Heads(upgraded)
        assert heads.get("old").raw_written
        new = heads.create(
            "new",
            size=4096,
            extent_size=65536,
            durability="local",
            commit_interval=5.0,
            max_dirty=65536,
        )
        assert not new.raw_written
    finally:
        upgraded.close()


def test_max_dirty_and_sweeps_are_added_to_an_old_catalog(url: str) -> None:
    """0004 gives existing volumes the default max_dirty and GC a sweep count of 0, and
    goes back down cleanly."""
    from alembic import command
    from alembic.config import Config

    cat = Catalog(url, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
    with cat.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.commit()
    with cat.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO volumes (uid, name, size, extent_size, durability, "
                "commit_interval, lineage, created_at, root, version, epoch) VALUES "
                "('u', 'old', 1024, 1024, 'local', 5.0, '[]', 0, '00', 0, 0)"
            )
        )
    cat.close()

    upgraded = Catalog(url)
    try:
        with upgraded.read() as conn:
            assert conn.execute(select(volumes.c.max_dirty)).scalar_one() == 1 << 30
            assert conn.execute(select(gc_state.c.sweeps)).scalar_one() == 0
        with upgraded.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
            conn.commit()
        assert _revision(url) == "0003"
        with upgraded.engine.connect() as conn:
            assert "max_dirty" not in {c["name"] for c in inspect(conn).get_columns("volumes")}
    finally:
        upgraded.close()


def test_upgrade_adds_workspace_tables_and_downgrade_drops_them(url: str) -> None:
    """0005: workspaces, their runtime state and snapshot environments; existing data
    stays, and the downgrade leaves the catalog as 0004 had it."""
    from alembic import command
    from alembic.config import Config

    from loft.node.records import Records
    from loft.runtime.spec import Limits, Network

    cat = Catalog(url, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
    with cat.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        conn.commit()
    with cat.engine.begin() as conn:
        conn.execute(insert(settings).values(key="old", value="kept"))
    cat.close()

    upgraded = Catalog(url)
    try:
        rec = Records(upgraded).create(
            owner="root",
            name="dev",
            spec="[env]\n",
            spec_source="t",
            limits=Limits(),
            size=1 << 30,
            network=Network.NONE,
            runtime="sandbox",
        )
        Records(upgraded).add_state(rec.id, "n")
        assert Records(upgraded).get("root", "dev").record == rec
        with upgraded.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
            conn.commit()
        insp = inspect(upgraded.engine)
        assert not any(
            insp.has_table(t) for t in ("workspaces", "workspace_runtime", "workspace_snapshots")
        )
        with upgraded.read() as conn:
            assert conn.execute(select(settings.c.value)).scalar_one() == "kept"
    finally:
        upgraded.close()

"""Workspace records and runtime state in the catalog, on SQLite and PostgreSQL: names
unique per owner and DNS-safe, id ranges allocated in the inserting transaction (never
twice, even by two nodes at once), rows gone with the workspace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loft.catalog import Catalog
from loft.node.records import (
    BadName,
    Desired,
    NameTaken,
    Phase,
    Records,
    check_workspace_name,
    new_workspace_id,
)
from loft.runtime.ids import FIRST_HOST_ID, RANGE_SIZE
from loft.runtime.spec import Limits, Network

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        yield request.getfixturevalue("postgres_db_url")


@pytest.fixture
def records(url: str) -> Iterator[Records]:
    cat = Catalog(url)
    yield Records(cat)
    cat.close()


def _create(r: Records, name: str, owner: str = "root", etc: Path = Path("/nonexistent")) -> str:
    rec = r.create(owner=owner, name=name, spec="[env]\n", spec_source="test",
                   limits=Limits(memory=1 << 30), size=1 << 30, network=Network.NONE,
                   runtime="sandbox", etc=etc)  # fmt: skip
    r.add_state(rec.id, "n1")  # what the node adds when it makes the workspace
    return rec.id


@pytest.mark.parametrize("name", ["a", "dev", "web-1", "x" * 40, "a1-b2-c3"])
def test_workspace_records_names_are_dns_safe(name: str) -> None:
    assert check_workspace_name(name) == name


@pytest.mark.parametrize("name", ["", "1a", "-a", "a-", "a--b", "A", "a_b", "a.b", "x" * 41, "é"])
def test_workspace_records_bad_names_are_refused(name: str) -> None:
    with pytest.raises(BadName):
        check_workspace_name(name)


def test_workspace_records_ids_are_short_and_random() -> None:
    ids = {new_workspace_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 10 and i[0].isalpha() and i.isalnum() and i.islower() for i in ids)


def test_workspace_records_names_unique_per_owner(records: Records) -> None:
    first = _create(records, "dev")
    with pytest.raises(NameTaken, match="named 'dev' exists"):
        _create(records, "dev")
    other = _create(records, "dev", owner="alice")  # another owner may use the name
    ws = records.get("root", "dev")
    assert ws.record.id == first and ws.record.volume == f"ws-{first}"
    assert ws.state.phase is Phase.CREATING and ws.state.desired is Desired.STOPPED
    assert records.get("alice", "dev").record.id == other
    assert {w.record.id for w in records.all()} == {first, other}
    assert [w.record.id for w in records.all(owner="alice")] == [other]


def test_workspace_records_ranges_never_overlap(records: Records, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    # A host user whose uid lies in the second range: that range is never handed out.
    (etc / "passwd").write_text(f"u:x:{FIRST_HOST_ID + RANGE_SIZE + 5}:1::/:/bin/sh\n")
    a = records.by_id(_create(records, "a", etc=etc))
    b = records.by_id(_create(records, "b", etc=etc))
    assert a is not None and b is not None
    assert a.record.ids.host == FIRST_HOST_ID
    assert b.record.ids.host == FIRST_HOST_ID + 2 * RANGE_SIZE
    records.delete(a.record.id)
    records.delete_record(a.record.id)
    c = records.by_id(_create(records, "c", etc=etc))
    assert c is not None and c.record.ids.host == FIRST_HOST_ID  # freed, reused


def test_workspace_records_two_nodes_allocating_at_once(url: str) -> None:
    """Two catalogs (two nodes) creating at once: every workspace its own range."""
    cats = [Catalog(url), Catalog(url)]
    made: list[str] = []
    errors: list[BaseException] = []

    def worker(r: Records, prefix: str) -> None:
        try:
            for i in range(8):
                made.append(_create(r, f"{prefix}{i}"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(Records(c), p))
               for c, p in zip(cats, "ab", strict=True)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    bases = [w.record.ids.host for w in Records(cats[0]).all()]
    assert len(bases) == len(set(bases)) == 16
    for c in cats:
        c.close()


def test_workspace_records_state_and_snapshots(records: Records) -> None:
    wid = _create(records, "dev")
    records.set_state(wid, phase=Phase.RUNNING, desired=Desired.RUNNING,
                      attachment={"volume": "v", "holder": "h"})  # fmt: skip
    st = records.get("root", "dev").state
    assert (st.phase, st.desired, st.attachment) == (Phase.RUNNING, Desired.RUNNING,
                                                     {"volume": "v", "holder": "h"})  # fmt: skip
    assert [w.record.id for w in records.on_node("n1")] == [wid]
    assert records.on_node("n2") == []
    records.add_snapshot(wid, "s1", "/nix/store/aaa-env")
    records.add_snapshot(wid, "s1", "/nix/store/bbb-env")  # the same name again: replaced
    assert records.snapshot_envs(wid) == {"s1": "/nix/store/bbb-env"}
    assert records.snapshot_env_paths() == {"/nix/store/bbb-env"}
    records.delete(wid)  # the node's rows: the record stays, the control plane's
    assert records.find("root", "dev") is None and records.record(wid) is not None
    assert records.snapshot_env_paths() == set()
    records.delete_record(wid)
    assert records.record(wid) is None

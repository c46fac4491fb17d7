"""Profiles: switch, generations, rollback — on the SQLite and PostgreSQL catalogs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loft.catalog import Catalog
from loft.envstore.profiles import ProfileError, Profiles

A = "/nix/store/" + "a" * 32 + "-env"
B = "/nix/store/" + "b" * 32 + "-env"
C = "/nix/store/" + "c" * 32 + "-env"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def profiles(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Profiles]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    catalog = Catalog(url)
    try:
        yield Profiles(catalog)
    finally:
        catalog.close()


def test_switch_and_generations(profiles: Profiles) -> None:
    g1 = profiles.switch("dev", A)
    g2 = profiles.switch("dev", B)
    assert (g1.number, g2.number) == (1, 2)
    gens = profiles.generations("dev")
    assert [(g.number, g.env_path, g.current) for g in gens] == [(1, A, False), (2, B, True)]
    assert gens[0].created_at <= gens[1].created_at
    cur = profiles.current("dev")
    assert cur is not None and cur.env_path == B
    assert profiles.list() == {"dev": 2}


def test_rollback_then_switch_appends(profiles: Profiles) -> None:
    profiles.switch("p", A)
    profiles.switch("p", B)
    back = profiles.rollback("p")
    assert (back.number, back.env_path) == (1, A)
    cur = profiles.current("p")
    assert cur is not None and cur.env_path == A
    with pytest.raises(ProfileError, match="no generation before 1"):
        profiles.rollback("p")
    g3 = profiles.switch("p", C)
    assert g3.number == 3  # like Nix: a switch after a rollback appends, history is kept
    assert profiles.rollback("p", to=2).env_path == B
    with pytest.raises(ProfileError, match="no generation 9"):
        profiles.rollback("p", to=9)


def test_unknown_profile_and_bad_names(profiles: Profiles) -> None:
    assert profiles.current("nope") is None
    with pytest.raises(ProfileError, match="no profile named"):
        profiles.generations("nope")
    with pytest.raises(ProfileError, match="no profile named"):
        profiles.rollback("nope")
    for bad in ["", "-x", "a/b", "a b", "x" * 300]:
        with pytest.raises(ProfileError, match="bad profile name"):
            profiles.switch(bad, A)


def test_delete_generations_keeps_current_and_roots(profiles: Profiles) -> None:
    for p in (A, B, C):
        profiles.switch("p", p)
    profiles.rollback("p", to=1)
    doomed = profiles.delete_generations("p", keep=1)
    assert [g.number for g in doomed] == [2]
    assert [g.number for g in profiles.generations("p")] == [1, 3]
    assert profiles.all_env_paths() == {A, C}


def test_concurrent_switches_get_distinct_numbers(profiles: Profiles) -> None:
    with ThreadPoolExecutor(4) as pool:
        gens = list(pool.map(lambda i: profiles.switch("busy", f"{A}{i}"), range(12)))
    assert sorted(g.number for g in gens) == list(range(1, 13))
    assert profiles.list()["busy"] in range(1, 13)

"""Profiles: named chains of environment generations, kept in the platform catalog.

A profile is a pointer (``env_profiles.generation``) into its own list of generations
(``env_generations``: number, env store path, creation time). Switching appends a
generation and moves the pointer; rolling back moves the pointer to the previous existing
generation. Both are one small catalog transaction, so they are instant and survive the
node: the store paths themselves can be re-substituted from a binary cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from loft.catalog import Catalog
from loft.catalog.schema import env_generations, env_profiles
from loft.envstore import EnvstoreError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")

__all__ = ["Generation", "ProfileError", "Profiles", "validate_profile_name"]


class ProfileError(EnvstoreError):
    """A profile operation cannot be done (unknown profile, nothing to roll back to...)."""


def validate_profile_name(name: str) -> None:
    """Profile names are 1-255 of ``[A-Za-z0-9._-]``, starting with a letter or digit."""
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(
            f"bad profile name {name!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )


@dataclass(frozen=True)
class Generation:
    """One generation of a profile."""

    profile: str
    number: int
    env_path: str
    created_at: float
    current: bool


class Profiles:
    """Profile operations on a :class:`~loft.catalog.Catalog`."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _current(self, conn: Connection, name: str) -> int | None:
        row = conn.execute(
            select(env_profiles.c.generation).where(env_profiles.c.name == name)
        ).first()
        return None if row is None else int(row[0])

    def switch(self, name: str, env_path: str) -> Generation:
        """Append a generation pointing at ``env_path`` and make it current."""
        validate_profile_name(name)
        for _attempt in range(10):
            try:
                with self.catalog.write() as conn:
                    now = self.catalog.now(conn)
                    # Lock the profile's row (PostgreSQL; SQLite's BEGIN IMMEDIATE already
                    # serialises writers) so concurrent switches queue instead of colliding.
                    row = conn.execute(
                        select(env_profiles.c.generation)
                        .where(env_profiles.c.name == name)
                        .with_for_update()
                    ).first()
                    if row is None:
                        # A concurrent first switch may insert it too: IntegrityError, retry.
                        conn.execute(insert(env_profiles).values(name=name, generation=0))
                    last = conn.execute(
                        select(func.max(env_generations.c.number)).where(
                            env_generations.c.profile == name
                        )
                    ).scalar()
                    number = int(last or 0) + 1
                    conn.execute(
                        insert(env_generations).values(
                            profile=name, number=number, env_path=env_path, created_at=now
                        )
                    )
                    conn.execute(
                        update(env_profiles)
                        .where(env_profiles.c.name == name)
                        .values(generation=number)
                    )
                    return Generation(name, number, env_path, now, True)
            except IntegrityError:
                continue
        raise ProfileError(f"profile {name!r} is being switched concurrently; try again")

    def generations(self, name: str) -> list[Generation]:
        """All generations of ``name``, oldest first; :class:`ProfileError` if it is unknown."""
        with self.catalog.read() as conn:
            cur = self._current(conn, name)
            if cur is None:
                raise ProfileError(f"no profile named {name!r}", hint="loft env profile --help")
            rows = conn.execute(
                select(
                    env_generations.c.number,
                    env_generations.c.env_path,
                    env_generations.c.created_at,
                )
                .where(env_generations.c.profile == name)
                .order_by(env_generations.c.number)
            ).all()
        return [Generation(name, n, p, t, n == cur) for n, p, t in rows]

    def current(self, name: str) -> Generation | None:
        """The current generation of ``name``, or None when there is no such profile."""
        with self.catalog.read() as conn:
            cur = self._current(conn, name)
            if cur is None:
                return None
            row = conn.execute(
                select(env_generations.c.env_path, env_generations.c.created_at).where(
                    env_generations.c.profile == name, env_generations.c.number == cur
                )
            ).one()
        return Generation(name, cur, row[0], row[1], True)

    def rollback(self, name: str, to: int | None = None) -> Generation:
        """Make the previous generation (or generation ``to``) current."""
        with self.catalog.write() as conn:
            cur = self._current(conn, name)
            if cur is None:
                raise ProfileError(f"no profile named {name!r}")
            q = select(
                env_generations.c.number, env_generations.c.env_path, env_generations.c.created_at
            ).where(env_generations.c.profile == name)
            if to is None:
                q = q.where(env_generations.c.number < cur).order_by(
                    env_generations.c.number.desc()
                )
            else:
                q = q.where(env_generations.c.number == to)
            row = conn.execute(q.limit(1)).first()
            if row is None:
                raise ProfileError(
                    f"profile {name!r} has no generation {to}"
                    if to is not None
                    else f"profile {name!r} has no generation before {cur} to roll back to"
                )
            conn.execute(
                update(env_profiles).where(env_profiles.c.name == name).values(generation=row[0])
            )
        return Generation(name, int(row[0]), row[1], row[2], True)

    def delete_generations(self, name: str, keep: int) -> list[Generation]:
        """Delete all but the newest ``keep`` generations (never the current one)."""
        gens = self.generations(name)
        doomed = [g for g in gens[: max(0, len(gens) - keep)] if not g.current]
        if doomed:
            with self.catalog.write() as conn:
                conn.execute(
                    delete(env_generations).where(
                        env_generations.c.profile == name,
                        env_generations.c.number.in_([g.number for g in doomed]),
                    )
                )
        return doomed

    def delete(self, name: str) -> bool:
        """Forget profile ``name`` and every generation of it (their environments become
        garbage unless something else roots them); False when there was no such profile."""
        with self.catalog.write() as conn:
            conn.execute(delete(env_generations).where(env_generations.c.profile == name))
            gone = conn.execute(delete(env_profiles).where(env_profiles.c.name == name))
        return bool(gone.rowcount)

    def list(self) -> dict[str, int]:
        """Every profile and its current generation number."""
        with self.catalog.read() as conn:
            rows = conn.execute(
                select(env_profiles.c.name, env_profiles.c.generation).order_by(env_profiles.c.name)
            ).all()
        return {n: int(g) for n, g in rows}

    def all_env_paths(self) -> set[str]:
        """Every env path any generation of any profile points to (GC roots)."""
        with self.catalog.read() as conn:
            return {r[0] for r in conn.execute(select(env_generations.c.env_path).distinct())}

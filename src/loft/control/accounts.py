"""Users, their tokens and quotas, in the catalog.

Tokens are ``loft_<id>_<secret>``: the id (16 hex digits) is public and names the row; the
secret is 32 random bytes. The catalog keeps only ``HMAC-SHA256(key, secret)``, keyed with
a per-deployment secret kept in the catalog's settings. A slow password hash (bcrypt,
argon2) exists to stretch guessable secrets; these have 256 bits of entropy, so nobody
can guess one however fast the hash, and a fast keyed hash keeps every request's check in
microseconds. The stored digest is compared in constant time (``hmac.compare_digest``),
and an unknown id, a wrong secret and a revoked token are one answer: 401.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update

from loft.api import Quotas, Token, TokenCreated, Usage, User, UserCreated
from loft.catalog import Catalog
from loft.catalog import schema as s
from loft.control.errors import Conflict, NotFound

__all__ = [
    "FIRST_ADMIN",
    "Accounts",
    "Principal",
    "format_token",
    "parse_token",
    "quotas_of",
    "usage_of",
]

#: The admin made at first start, and who root on the node is over the local socket:
#: ``root``, who also owns the workspaces made on a node before it had a control plane.
FIRST_ADMIN = "root"
_KEY_SETTING = "control_token_key"
_PREVIEW_KEY_SETTING = "control_preview_key"
_TOKEN = re.compile(r"^loft_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
#: A token's last use is written at most this often (a write per request would serialise
#: every request behind SQLite's write lock).
_TOUCH_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as."""

    id: int
    name: str
    admin: bool


def format_token(token_id: str, secret: str) -> str:
    """The bearer string of a token."""
    return f"loft_{token_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    m = _TOKEN.match(token)
    return (m.group(1), m.group(2)) if m else None


class Accounts:
    """Users, tokens and quotas over one catalog. Thread-safe (the catalog is)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        with catalog.write() as conn:
            self._key = _token_key(conn)
            #: the key of preview grants (:mod:`loft.control.preview.grants`)
            self.preview_key = _token_key(conn, _PREVIEW_KEY_SETTING)

    def _digest(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()

    # --- authentication ------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal | None:
        """The user a bearer token belongs to, or None (unknown, wrong or revoked)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        with self.catalog.read() as conn:
            row = conn.execute(
                select(s.tokens.c.digest, s.tokens.c.last_used_at, s.users)
                .join(s.users, s.users.c.id == s.tokens.c.user_id)
                .where(s.tokens.c.id == token_id)
            ).first()
            now = self.catalog.now(conn)
        if row is None or not hmac.compare_digest(row.digest, self._digest(secret)):
            return None
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
            with self.catalog.write() as conn:
                conn.execute(
                    update(s.tokens)
                    .where(s.tokens.c.id == token_id)
                    .values(last_used_at=self.catalog.now(conn))
                )
        return Principal(row.id, row.name, row.admin)

    def principal(self, name: str) -> Principal:
        """The principal of a user by name (root over the local socket is the first admin)."""
        with self.catalog.read() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user {name}")
        return Principal(row.id, row.name, row.admin)

    def grantee(self, user_id: int, token_id: str) -> Principal | None:
        """The user a preview grant was made for, if it still stands: the user exists
        and the token it was made with (none: root over the local socket, as the first
        admin) is still live and theirs."""
        with self.catalog.read() as conn:
            row = conn.execute(select(s.users).where(s.users.c.id == user_id)).first()
            if row is None:
                return None
            if token_id:
                live = conn.execute(
                    select(s.tokens.c.id).where(
                        s.tokens.c.id == token_id, s.tokens.c.user_id == user_id
                    )
                ).first()
                if live is None:
                    return None
            elif row.name != FIRST_ADMIN:
                return None
        return Principal(row.id, row.name, row.admin)

    # --- users ---------------------------------------------------------------------------

    def ensure_first_admin(self) -> str | None:
        """Make the first admin and its token when no admin exists; return the token
        (the only time it is seen), or None when there already is an admin."""
        with self.catalog.write() as conn:
            if conn.execute(select(s.users.c.id).where(s.users.c.admin)).first() is not None:
                return None
            user = conn.execute(select(s.users.c.id).where(s.users.c.name == FIRST_ADMIN)).first()
            if user is None:
                user_id = self._insert_user(conn, FIRST_ADMIN, True, Quotas())
            else:
                user_id = user.id
                conn.execute(update(s.users).where(s.users.c.id == user_id).values(admin=True))
            return self._insert_token(conn, user_id, "first admin").token

    def create_user(self, name: str, admin: bool, quotas: Quotas) -> UserCreated:
        """A new user and its first token."""
        with self.catalog.write() as conn:
            if conn.execute(select(s.users.c.id).where(s.users.c.name == name)).first():
                raise Conflict(f"user {name} exists", hint="pick another name")
            user_id = self._insert_user(conn, name, admin, quotas)
            created = self._insert_token(conn, user_id, "first")
        return UserCreated(name, admin, created.token)

    def _insert_user(self, conn: Connection, name: str, admin: bool, quotas: Quotas) -> int:
        now = self.catalog.now(conn)
        user_id = conn.execute(
            insert(s.users).values(name=name, admin=admin, created_at=now).returning(s.users.c.id)
        ).scalar_one()
        conn.execute(insert(s.quotas).values(user_id=user_id, **_quota_values(quotas)))
        return int(user_id)

    def users(self) -> list[User]:
        """Every user, by name."""
        with self.catalog.read() as conn:
            rows = conn.execute(select(s.users).order_by(s.users.c.name)).all()
            return [self._user(conn, row) for row in rows]

    def user(self, name: str) -> User:
        """One user, with quotas and usage."""
        with self.catalog.read() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).first()
            if row is None:
                raise NotFound(f"no user {name}", hint="`loft user ls` lists them")
            return self._user(conn, row)

    def _user(self, conn: Connection, row: Row[Any]) -> User:
        return User(
            row.name, row.admin, row.created_at, quotas_of(conn, row.id), usage_of(conn, row.name)
        )

    def update_user(self, name: str, admin: bool | None, quotas: Quotas | None) -> User:
        """Change a user's admin flag or quotas."""
        with self.catalog.write() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).first()
            if row is None:
                raise NotFound(f"no user {name}", hint="`loft user ls` lists them")
            if admin is not None:
                if not admin and row.admin:
                    _keep_an_admin(conn, row.id)
                conn.execute(update(s.users).where(s.users.c.id == row.id).values(admin=admin))
            if quotas is not None:
                conn.execute(
                    update(s.quotas)
                    .where(s.quotas.c.user_id == row.id)
                    .values(**_quota_values(quotas))
                )
        return self.user(name)

    def delete_user(self, name: str) -> None:
        """Delete a user and their tokens; refused while they own workspaces, or when they
        are the last admin."""
        with self.catalog.write() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).first()
            if row is None:
                raise NotFound(f"no user {name}", hint="`loft user ls` lists them")
            owned = conn.execute(
                select(func.count()).select_from(s.workspaces).where(s.workspaces.c.owner == name)
            ).scalar_one()
            if owned:
                raise Conflict(f"user {name} owns {owned} workspace(s)", hint="delete them first")
            if row.admin:
                _keep_an_admin(conn, row.id)
            conn.execute(delete(s.tokens).where(s.tokens.c.user_id == row.id))
            conn.execute(delete(s.quotas).where(s.quotas.c.user_id == row.id))
            conn.execute(delete(s.users).where(s.users.c.id == row.id))

    # --- tokens --------------------------------------------------------------------------

    def create_token(self, user: Principal, name: str) -> TokenCreated:
        """A new token for ``user``."""
        with self.catalog.write() as conn:
            return self._insert_token(conn, user.id, name)

    def _insert_token(self, conn: Connection, user_id: int, name: str) -> TokenCreated:
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = self.catalog.now(conn)
        conn.execute(
            insert(s.tokens).values(
                id=token_id,
                user_id=user_id,
                name=name,
                digest=self._digest(secret),
                created_at=now,
            )
        )
        return TokenCreated(token_id, name, now, format_token(token_id, secret))

    def tokens(self, user: Principal) -> list[Token]:
        """``user``'s tokens, oldest first (never their secrets)."""
        with self.catalog.read() as conn:
            rows = conn.execute(
                select(s.tokens)
                .where(s.tokens.c.user_id == user.id)
                .order_by(s.tokens.c.created_at, s.tokens.c.id)
            ).all()
        return [Token(r.id, r.name, r.created_at, r.last_used_at) for r in rows]

    def revoke_token(self, user: Principal, token_id: str) -> Token:
        """Delete one of ``user``'s tokens (it stops working at once); return it as it was."""
        mine = (s.tokens.c.id == token_id, s.tokens.c.user_id == user.id)
        with self.catalog.write() as conn:
            row = conn.execute(select(s.tokens).where(*mine)).first()
            if row is None:
                raise NotFound(f"you have no token {token_id}", hint="`loft token ls` lists them")
            conn.execute(delete(s.tokens).where(*mine))
        return Token(row.id, row.name, row.created_at, row.last_used_at)


def quotas_of(conn: Connection, user_id: int) -> Quotas:
    """A user's quotas (the defaults when they have no row)."""
    row = conn.execute(select(s.quotas).where(s.quotas.c.user_id == user_id)).first()
    if row is None:
        return Quotas()
    return Quotas(row.workspaces, row.memory, row.cpus, row.disk)


def usage_of(conn: Connection, owner: str) -> Usage:
    """What a user's workspace records add up to (``owner``: the user's name)."""
    w = s.workspaces
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(w.c.memory), 0),
            func.coalesce(func.sum(w.c.cpus), 0.0),
            func.coalesce(func.sum(w.c.size), 0),
        ).where(w.c.owner == owner)
    ).one()
    return Usage(int(row[0]), int(row[1]), float(row[2]), int(row[3]))


def _quota_values(q: Quotas) -> dict[str, object]:
    return {"workspaces": q.workspaces, "memory": q.memory, "cpus": q.cpus, "disk": q.disk}


def _keep_an_admin(conn: Connection, user_id: int) -> None:
    others = conn.execute(
        select(func.count()).select_from(s.users).where(s.users.c.admin, s.users.c.id != user_id)
    ).scalar_one()
    if not others:
        raise Conflict("that is the last admin", hint="make another user admin first")


def _token_key(conn: Connection, setting: str = _KEY_SETTING) -> bytes:
    """A per-deployment key (of token digests, by default), made on first use."""
    row = conn.execute(select(s.settings.c.value).where(s.settings.c.key == setting)).first()
    if row is not None:
        return bytes.fromhex(row[0])
    key = secrets.token_bytes(32)
    conn.execute(insert(s.settings).values(key=setting, value=key.hex()))
    return key

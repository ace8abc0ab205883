"""The accounts database: users, memberships (member or owner), sessions, API tokens,
invitations, sign-in tickets, password reset links, the dashboard's admins. The schema and its
upgrades: schema.py.

One SQLite file in the gateway's state folder (never in a tenant's), mode 0600, in WAL mode so
that the CLI can write while the gateway reads. Every secret that grants access (session ids,
API tokens, invitation and ticket codes) is stored as its SHA-256 only: a copy of the file
signs nobody in. They are 256-bit random values, so a plain hash is enough (no salt, no KDF).

Synchronous: the gateway calls it through asyncio.to_thread, the CLI directly. Each call opens
its own connection (~0.1 ms), so any thread may call any method.

    sessions   a sign-in on the apex (parent NULL, valid on every host), and the sessions it
               handed to tenant hosts whose browser did not send the apex cookie (parent set,
               valid on that tenant only). Deleting the parent deletes its children: sign-out
               ends the session everywhere.
    tickets    one-time codes that hand a session to a tenant host (see service.py).
    resets     one-time codes that let the account's owner choose a new password.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AccountError
from .schema import migrate

ACCOUNTS_FILE = "accounts.db"
# last_seen is written at most this often per session (a write per request would be wasteful),
# or a quarter of the idle timeout if that is shorter.
TOUCH_EVERY_S = 60.0



def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a session or API token belongs to, as the request path needs it."""

    user_id: int
    email: str
    tenants: frozenset[str]  # the tenants they are a member of (owners included)
    session_root: str = ""  # the sign-in's session id hash; "" for an API token
    only_tenant: str | None = None  # a tenant host's session is valid on that tenant only
    expires: float = float("inf")  # when the session or token ends, wall clock
    owner_of: frozenset[str] = frozenset()  # the tenants they are an owner of

    def role(self, tenant: str) -> str | None:
        """"owner", "member", or None (not a member of `tenant`)."""
        if tenant in self.owner_of:
            return "owner"
        return "member" if tenant in self.tenants else None


@dataclass(frozen=True, slots=True)
class UserInfo:
    email: str
    tenants: tuple[str, ...]
    created: float
    last_sign_in: float | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    email: str
    name: str
    created: float
    last_used: float | None
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A sign-in session, as the account page lists it."""

    id_hash: str
    created: float
    last_seen: float
@dataclass(frozen=True, slots=True)
class Invite:
    email: str
    tenants: tuple[str, ...]
    expires: float


class AccountStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._create()

    def close(self) -> None:
        """Nothing to release here: each call opens its own connection."""

    def _create(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # 0600 from the start
        with self._connect() as db:
            if migrate(db, self.path.name):
                db.execute("PRAGMA journal_mode = WAL")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            # In WAL mode, NORMAL never corrupts; a power cut may lose the last sign-ins.
            db.execute("PRAGMA synchronous = NORMAL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- users --------------------------------------------------------------------------------

    def add_user(self, email: str, password_hash: str, now: float) -> int:
        with self._transaction() as db:
            return _insert_user(db, email, password_hash, now)

    def credentials(self, email: str) -> tuple[int, str] | None:
        """(user id, password hash) of the account with this (normalised) email."""
        with self._connect() as db:
            row = db.execute("SELECT id, password_hash FROM users WHERE email = ?",
                             (email,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_password(self, email: str, password_hash: str, *, keep_session: str = "") -> None:
        """A new password ends every session of the account (but `keep_session`, the one
        whose user changed it) and makes its reset links worthless."""
        with self._transaction() as db:
            user_id = _user_id(db, email)
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            db.execute("DELETE FROM sessions WHERE user_id = ? AND id_hash != ? AND"
                       " (parent IS NULL OR parent != ?)", (user_id, keep_session, keep_session))
            db.execute("DELETE FROM resets WHERE user_id = ?", (user_id,))

    def remove_user(self, email: str) -> None:
        """Removes its sessions, tokens and memberships too."""
        with self._transaction() as db:
            db.execute("DELETE FROM users WHERE id = ?", (_user_id(db, email),))

    def users(self) -> list[UserInfo]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT email, created, last_sign_in, (SELECT json_group_array(tenant) FROM"
                " (SELECT tenant FROM memberships WHERE user_id = users.id ORDER BY tenant))"
                " FROM users ORDER BY email"
            ).fetchall()
        return [UserInfo(email, tuple(json.loads(tenants)), created, last)
                for email, created, last, tenants in rows]

    # --- the dashboard's admins: by email, so an admin who loses their account loses nothing
    # else, and one made again is an admin again -------------------------------------------------

    def add_admin(self, email: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO admins (email, added) VALUES (?, ?)", (email, now))

    def remove_admin(self, email: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM admins WHERE email = ?", (email,)).rowcount > 0

    def admins(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT email FROM admins ORDER BY email")]

    def is_admin(self, email: str) -> bool:
        with self._connect() as db:
            found = db.execute("SELECT 1 FROM admins WHERE email = ?", (email,)).fetchone()
            return found is not None

    # --- memberships --------------------------------------------------------------------------

    def add_member(self, tenant: str, email: str, role: str | None = None) -> bool:
        """Make `email` a member of `tenant`, with `role` if given (else a new member is a
        member and an existing one keeps their role). False if they were a member already."""
        with self._transaction() as db:
            user_id = _user_id(db, email)
            added = db.execute("INSERT OR IGNORE INTO memberships (user_id, tenant, role)"
                               " VALUES (?, ?, ?)", (user_id, tenant, role or "member")).rowcount
            if role is not None:
                db.execute("UPDATE memberships SET role = ? WHERE user_id = ? AND tenant = ?",
                           (role, user_id, tenant))
        return bool(added)

    def remove_member(self, tenant: str, email: str, *, keep_an_owner: bool = False) -> None:
        """`keep_an_owner`: refuse to remove the tenant's last owner (the Team page does)."""
        with self._transaction() as db:
            removed = db.execute("DELETE FROM memberships WHERE user_id = ? AND tenant = ?",
                                 (_user_id(db, email), tenant)).rowcount
            if not removed:
                raise AccountError(f"{email} is not a member of {tenant!r}")
            if keep_an_owner:
                _check_an_owner_is_left(db, tenant, email)

    def set_role(self, tenant: str, email: str, role: str, *, keep_an_owner: bool = False
                 ) -> None:
        with self._transaction() as db:
            changed = db.execute("UPDATE memberships SET role = ? WHERE user_id = ? AND"
                                 " tenant = ?", (role, _user_id(db, email), tenant)).rowcount
            if not changed:
                raise AccountError(f"{email} is not a member of {tenant!r}")
            if keep_an_owner:
                _check_an_owner_is_left(db, tenant, email)

    def team(self, tenant: str) -> list[tuple[str, str]]:
        """(email, role) of every member of `tenant`: owners first, then by email."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT email, role FROM users JOIN memberships ON memberships.user_id = users.id"
                " WHERE tenant = ? ORDER BY role = 'member', email", (tenant,)
            ).fetchall()
        return [(email, role) for email, role in rows]

    def pending_invites(self, tenant: str, now: float) -> list[Invite]:
        """Invitations to `tenant` not yet accepted, newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT email, tenants, expires FROM invites WHERE expires >= ? AND EXISTS"
                " (SELECT 1 FROM json_each(invites.tenants) WHERE value = ?)"
                " ORDER BY created DESC", (now, tenant)
            ).fetchall()
        return [Invite(email, tuple(json.loads(tenants)), expires)
                for email, tenants, expires in rows]

    def forget_tenant(self, tenant: str) -> list[str]:
        """Remove every membership of `tenant`; return who were members."""
        former = self.members(tenant)
        with self._transaction() as db:
            db.execute("DELETE FROM memberships WHERE tenant = ?", (tenant,))
        return former

    def members(self, tenant: str) -> list[str]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT email FROM users JOIN memberships ON memberships.user_id = users.id"
                " WHERE tenant = ? ORDER BY email", (tenant,)
            ).fetchall()
        return [row[0] for row in rows]

    # --- sessions -----------------------------------------------------------------------------

    def sign_in(self, id_hash: str, user_id: int, now: float, *, replaces: list[str],
                new_password_hash: str | None) -> None:
        """Start a sign-in session. The browser's previous sessions (`replaces`) end, so a
        session id planted before sign-in is worth nothing after it (no fixation)."""
        with self._transaction() as db:
            for previous in replaces:
                _delete_session(db, previous)
            db.execute("INSERT INTO sessions (id_hash, user_id, created, last_seen)"
                       " VALUES (?, ?, ?, ?)", (id_hash, user_id, now, now))
            db.execute("UPDATE users SET last_sign_in = ? WHERE id = ?", (now, user_id))
            if new_password_hash is not None:  # argon2 parameters changed since it was made
                db.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                           (new_password_hash, user_id))

    def session(self, id_hash: str, now: float, idle_s: float, max_s: float) -> Principal | None:
        """The principal of a live session (touching it), or None if unknown or expired."""
        with self._connect() as db:
            row = db.execute(
                "SELECT s.user_id, u.email, s.parent, s.tenant, s.created, s.last_seen"
                " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
                (id_hash,),
            ).fetchone()
            if row is None:
                return None
            user_id, email, parent, tenant, created, last_seen = row
            if now > created + max_s or now > last_seen + idle_s:
                return None  # purge_expired deletes it
            tenants, owner_of = _tenants_of(db, user_id)
        if now - last_seen > min(TOUCH_EVERY_S, idle_s / 4):
            self.touch_session(id_hash, parent or id_hash, now)
            last_seen = now
        return Principal(
            user_id=user_id,
            email=email,
            tenants=tenants,
            session_root=parent or id_hash,
            only_tenant=tenant,
            expires=min(created + max_s, last_seen + idle_s),
            owner_of=owner_of,
        )

    def touch_session(self, id_hash: str, root_hash: str, now: float) -> None:
        """The session (and the sign-in it belongs to) was used at `now`."""
        with self._transaction() as db:
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash IN (?, ?)",
                       (now, id_hash, root_hash))

    def sessions(self, user_id: int, now: float, idle_s: float, max_s: float
                 ) -> list[SessionInfo]:
        """The account's live sign-in sessions, most recently used first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id_hash, created, last_seen FROM sessions WHERE user_id = ? AND parent"
                " IS NULL AND created >= ? AND last_seen >= ? ORDER BY last_seen DESC",
                (user_id, now - max_s, now - idle_s),
            ).fetchall()
        return [SessionInfo(*row) for row in rows]

    def end_session(self, user_id: int, root_hash: str) -> bool:
        """End one of the account's own sign-in sessions (and what it handed to tenants)."""
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM sessions WHERE id_hash = ? AND user_id = ? AND"
                                   " parent IS NULL", (root_hash, user_id)).rowcount)

    def delete_session(self, root_hash: str) -> None:
        """End a sign-in session and every session it handed to a tenant host."""
        with self._transaction() as db:
            _delete_session(db, root_hash)

    def purge_expired(self, now: float, idle_s: float, max_s: float) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE created < ? OR last_seen < ?",
                       (now - max_s, now - idle_s))
            db.execute("DELETE FROM tickets WHERE expires < ?", (now,))
            db.execute("DELETE FROM invites WHERE expires < ?", (now,))
            db.execute("DELETE FROM resets WHERE expires < ?", (now,))

    # --- tickets: handing a session to a tenant host -------------------------------------------

    def add_ticket(self, code_hash: str, root_hash: str, tenant: str, state_hash: str,
                   expires: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO tickets (code_hash, session, tenant, state_hash, expires)"
                       " VALUES (?, ?, ?, ?, ?)", (code_hash, root_hash, tenant, state_hash,
                                                    expires))

    def redeem_ticket(self, code_hash: str, tenant: str, state_hash: str, child_hash: str,
                      now: float) -> bool:
        """Use a ticket once: on success the tenant host's session `child_hash` exists."""
        with self._transaction() as db:
            row = db.execute(
                "DELETE FROM tickets WHERE code_hash = ? RETURNING session, tenant, state_hash,"
                " expires", (code_hash,)
            ).fetchone()
            if row is None:
                return False
            root, ticket_tenant, ticket_state, expires = row
            if ticket_tenant != tenant or ticket_state != state_hash or now > expires:
                return False
            db.execute(
                "INSERT INTO sessions (id_hash, user_id, parent, tenant, created, last_seen)"
                " SELECT ?, user_id, id_hash, ?, created, ? FROM sessions WHERE id_hash = ?",
                (child_hash, tenant, now, root),
            )
            return True

    # --- API tokens ---------------------------------------------------------------------------

    def add_token(self, email: str, token_id: str, token_hash: str, name: str,
                  now: float, expires: float | None = None) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO tokens (id, token_hash, user_id, name, created, expires)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       (token_id, token_hash, _user_id(db, email), name, now, expires))

    def token(self, token_hash: str, now: float) -> Principal | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT t.id, t.user_id, u.email, t.last_used, t.expires FROM tokens t"
                " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?", (token_hash,)
            ).fetchone()
            if row is None:
                return None
            token_id, user_id, email, last_used, expires = row
            if expires is not None and now >= expires:
                return None
            tenants, owner_of = _tenants_of(db, user_id)
        if last_used is None or now - last_used > TOUCH_EVERY_S:
            self.touch_token(token_id, now)
        return Principal(user_id=user_id, email=email, tenants=tenants, owner_of=owner_of,
                         expires=float("inf") if expires is None else expires)

    def touch_token(self, token_id: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (now, token_id))

    def tokens(self, email: str | None = None) -> list[TokenInfo]:
        query = ("SELECT t.id, u.email, t.name, t.created, t.last_used, t.expires FROM tokens t"
                 " JOIN users u ON u.id = t.user_id")
        with self._connect() as db:
            if email is None:
                rows = db.execute(query + " ORDER BY u.email, t.created").fetchall()
            else:
                _user_id(db, email)
                rows = db.execute(query + " WHERE u.email = ? ORDER BY t.created",
                                  (email,)).fetchall()
        return [TokenInfo(*row) for row in rows]

    def revoke_token(self, token_id: str, *, user_id: int | None = None) -> None:
        """`user_id`: revoke it only if it is that account's (the account page)."""
        with self._transaction() as db:
            if not db.execute("DELETE FROM tokens WHERE id = ? AND user_id = coalesce(?, user_id)",
                              (token_id, user_id)).rowcount:
                raise AccountError(f"no API token with id {token_id!r}"
                                   " (see `gateway user tokens`)")

    # --- password reset links -----------------------------------------------------------------

    def add_reset(self, code_hash: str, email: str, now: float, expires: float) -> bool:
        """A reset link for the account `email`; False (and nothing stored) if none has it."""
        with self._transaction() as db:
            user_id = _find_user(db, email)
            if user_id is None:
                return False
            db.execute("INSERT INTO resets (code_hash, user_id, created, expires)"
                       " VALUES (?, ?, ?, ?)", (code_hash, user_id, now, expires))
            return True

    def reset_email(self, code_hash: str, now: float) -> str | None:
        """The email of the account a live reset link is for."""
        with self._connect() as db:
            row = db.execute("SELECT u.email FROM resets r JOIN users u ON u.id = r.user_id"
                             " WHERE r.code_hash = ? AND r.expires >= ?",
                             (code_hash, now)).fetchone()
        return row[0] if row else None

    def use_reset(self, code_hash: str, password_hash: str, session_hash: str,
                  now: float) -> str:
        """Set the new password of the link's account, once: every other session and reset
        link of the account ends, and a new session `session_hash` starts. Returns the email."""
        with self._transaction() as db:
            row = db.execute("DELETE FROM resets WHERE code_hash = ? RETURNING user_id, expires",
                             (code_hash,)).fetchone()
            if row is None or now > row[1]:
                raise AccountError(_RESET_USED)
            user_id = row[0]
            db.execute("UPDATE users SET password_hash = ?, last_sign_in = ? WHERE id = ?",
                       (password_hash, now, user_id))
            db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM resets WHERE user_id = ?", (user_id,))
            db.execute("INSERT INTO sessions (id_hash, user_id, created, last_seen)"
                       " VALUES (?, ?, ?, ?)", (session_hash, user_id, now, now))
            email: str = db.execute("SELECT email FROM users WHERE id = ?",
                                    (user_id,)).fetchone()[0]
            return email

    # --- invitations --------------------------------------------------------------------------

    def add_invite(self, code_hash: str, email: str, tenants: tuple[str, ...], now: float,
                   expires: float) -> None:
        with self._transaction() as db:
            if _find_user(db, email) is not None:
                raise AccountError(
                    f"{email} already has an account; add it to a tenant with"
                    " `gateway tenant members NAME --add EMAIL`"
                )
            db.execute("INSERT INTO invites (code_hash, email, tenants, created, expires)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (code_hash, email, json.dumps(list(tenants)), now, expires))

    def invite(self, code_hash: str, now: float) -> Invite | None:
        with self._connect() as db:
            row = db.execute("SELECT email, tenants, expires FROM invites WHERE code_hash = ?"
                             " AND expires >= ?", (code_hash, now)).fetchone()
        return Invite(row[0], tuple(json.loads(row[1])), row[2]) if row else None

    def cancel_invites(self, tenant: str, email: str) -> int:
        """`email`'s invitations no longer bring `tenant` (one that brings nothing else is
        deleted). Returns how many were changed."""
        with self._transaction() as db:
            rows = db.execute("SELECT code_hash, tenants FROM invites WHERE email = ?",
                              (email,)).fetchall()
            changed = 0
            for code_hash, tenants in rows:
                kept = [t for t in json.loads(tenants) if t != tenant]
                if len(kept) == len(json.loads(tenants)):
                    continue
                changed += 1
                if kept:
                    db.execute("UPDATE invites SET tenants = ? WHERE code_hash = ?",
                               (json.dumps(kept), code_hash))
                else:
                    db.execute("DELETE FROM invites WHERE code_hash = ?", (code_hash,))
            return changed

    def accept_invite(self, code_hash: str, password_hash: str, session_hash: str,
                      now: float) -> None:
        """Create the invited account with its memberships, signed in as `session_hash`; the
        invitation is used up."""
        with self._transaction() as db:
            row = db.execute("DELETE FROM invites WHERE code_hash = ? RETURNING email, tenants,"
                             " expires", (code_hash,)).fetchone()
            if row is None or now > row[2]:
                raise AccountError("This invitation is not valid: it was used already or it"
                                   " has expired. Ask for a new one.")
            user_id = _insert_user(db, row[0], password_hash, now)
            db.executemany("INSERT INTO memberships (user_id, tenant) VALUES (?, ?)",
                           [(user_id, tenant) for tenant in json.loads(row[1])])
            db.execute("INSERT INTO sessions (id_hash, user_id, created, last_seen)"
                       " VALUES (?, ?, ?, ?)", (session_hash, user_id, now, now))


def _find_user(db: sqlite3.Connection, email: str) -> int | None:
    row = db.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()
    return row[0] if row else None


def _user_id(db: sqlite3.Connection, email: str) -> int:
    user_id = _find_user(db, email)
    if user_id is None:
        raise AccountError(f"no account for {email} (see `gateway user list`)")
    return user_id


def _insert_user(db: sqlite3.Connection, email: str, password_hash: str, now: float) -> int:
    if _find_user(db, email) is not None:
        raise AccountError(f"{email} already has an account")
    cursor = db.execute("INSERT INTO users (email, password_hash, created) VALUES (?, ?, ?)",
                        (email, password_hash, now))
    return cursor.lastrowid or 0


def _tenants_of(db: sqlite3.Connection, user_id: int) -> tuple[frozenset[str], frozenset[str]]:
    """(the tenants the user is a member of, those they own)."""
    rows = db.execute("SELECT tenant, role FROM memberships WHERE user_id = ?",
                      (user_id,)).fetchall()
    return (frozenset(tenant for tenant, _ in rows),
            frozenset(tenant for tenant, role in rows if role == "owner"))


def _check_an_owner_is_left(db: sqlite3.Connection, tenant: str, email: str) -> None:
    owners = db.execute("SELECT count(*) FROM memberships WHERE tenant = ? AND role = 'owner'",
                        (tenant,)).fetchone()[0]
    if not owners:
        raise AccountError(f"{email} is the last owner of {tenant!r}: make someone else an"
                           " owner first.")


_RESET_USED = ("This link to choose a new password is not valid: it was used already or it has"
               " expired. Ask for a new one.")


def _delete_session(db: sqlite3.Connection, id_hash: str) -> None:
    db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

"""The accounts database's schema, and the steps that bring an older file up to date.

`PRAGMA user_version` is the number of steps applied. A step only adds (columns with defaults,
tables), so a file keeps everything it held: memberships made before roles existed are members.
The CLI and the gateway may open the file at the same time; each applies the missing steps in
one write transaction, re-reading the version inside it, so only one of them does.
"""

from __future__ import annotations

import sqlite3

from ..errors import AccountError

_STEPS = (
    # 1: users, memberships, sessions, API tokens, invitations, sign-in tickets
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL,
        last_sign_in REAL
    );
    CREATE TABLE memberships (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        tenant TEXT NOT NULL,
        PRIMARY KEY (user_id, tenant)
    ) WITHOUT ROWID;
    CREATE INDEX memberships_by_tenant ON memberships(tenant);
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        parent TEXT REFERENCES sessions(id_hash) ON DELETE CASCADE,
        tenant TEXT,
        created REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX sessions_by_parent ON sessions(parent);
    CREATE INDEX sessions_by_user ON sessions(user_id);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL
    );
    CREATE INDEX tokens_by_user ON tokens(user_id);
    CREATE TABLE invites (
        code_hash TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        tenants TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE TABLE tickets (
        code_hash TEXT PRIMARY KEY,
        session TEXT NOT NULL REFERENCES sessions(id_hash) ON DELETE CASCADE,
        tenant TEXT NOT NULL,
        state_hash TEXT NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 2: teams (a role per membership), API tokens that expire, password reset links
    """
    ALTER TABLE memberships ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
        CHECK (role IN ('member', 'owner'));
    ALTER TABLE tokens ADD COLUMN expires REAL;
    CREATE TABLE resets (
        code_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE INDEX resets_by_user ON resets(user_id);
    """,
    # 3: the dashboard's admins (IF NOT EXISTS: gateways before this step made the table
    # themselves, apart from the accounts, and a cluster kept it per node)
    """
    CREATE TABLE IF NOT EXISTS admins (
        email TEXT PRIMARY KEY,
        added REAL NOT NULL
    );
    """,
)
VERSION = len(_STEPS)


def migrate(db: sqlite3.Connection, file: str) -> int:
    """Apply the steps `db` lacks (db in autocommit mode); return how many were applied."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise AccountError(
                f"{file}: the accounts database has schema version {version}, newer than this"
                f" gateway's ({VERSION}): run the newer gateway, or restore a backup"
            )
        for step in _STEPS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return VERSION - version

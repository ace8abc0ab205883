"""Account administration, as the CLI does it: straight on the accounts database.

The running gateway needs no signal: it re-reads sessions and tokens at least every
auth.session_cache_s, so removed users, revoked tokens and membership changes take effect
within that time.
"""

from __future__ import annotations

import secrets
import time

from ..config import Config
from ..errors import AccountError
from .passwords import Passwords, normalise_email
from .service import TOKEN_PREFIX
from .store import TokenInfo, UserInfo, digest
from .stores import open_store
from .urls import public_origin


def new_token() -> tuple[str, str]:
    """(token id, API token): the id names it in lists, the token is the secret."""
    return secrets.token_hex(4), f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"


class Accounts:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config)
        self.passwords = Passwords(config.gateway.auth)

    def close(self) -> None:
        self.store.close()

    def add_user(self, email: str, password: str) -> str:
        email = normalise_email(email)
        self.store.add_user(email, self.passwords.hash(password), time.time())
        return email

    def set_password(self, email: str, password: str) -> None:
        """A new password; the account's sessions end (everywhere, within session_cache_s)."""
        self.store.set_password(normalise_email(email), self.passwords.hash(password))

    def remove_user(self, email: str) -> None:
        self.store.remove_user(normalise_email(email))

    def users(self) -> list[UserInfo]:
        return self.store.users()

    def invite(self, email: str, tenants: tuple[str, ...]) -> str:
        """A one-time sign-up link that expires after auth.invite_ttl_s."""
        email = normalise_email(email)
        for tenant in tenants:
            self._check_tenant(tenant)
        code = secrets.token_urlsafe(32)
        now = time.time()
        self.store.add_invite(digest(code), email, tenants, now,
                              now + self.config.gateway.auth.invite_ttl_s)
        return f"{public_origin(self.config)}/-/invite/{code}"

    def issue_token(self, email: str, name: str) -> tuple[str, str]:
        """(token id, token). Only the token's hash is stored: it is shown once."""
        token_id, token = new_token()
        self.store.add_token(normalise_email(email), token_id, digest(token), name, time.time())
        return token_id, token

    def tokens(self, email: str | None) -> list[TokenInfo]:
        return self.store.tokens(normalise_email(email) if email else None)

    def revoke_token(self, token_id: str) -> None:
        self.store.revoke_token(token_id)

    def members(self, tenant: str) -> list[str]:
        return self.store.members(tenant)

    def forget_tenant(self, tenant: str) -> list[str]:
        """A removed tenant's members lose it, so that a new tenant of the same name starts
        with none of them."""
        return self.store.forget_tenant(tenant)

    def team(self, tenant: str) -> list[tuple[str, str]]:
        """(email, role) of each member: owners first."""
        return self.store.team(tenant)

    def add_member(self, tenant: str, email: str, role: str | None = None) -> None:
        """`role` None: a new member is a member, an existing one keeps their role."""
        self._check_tenant(tenant)
        self.store.add_member(tenant, normalise_email(email), role)

    def remove_member(self, tenant: str, email: str) -> None:
        self.store.remove_member(tenant, normalise_email(email))

    def check_users_exist(self, emails: tuple[str, ...]) -> None:
        for email in emails:
            if self.store.credentials(normalise_email(email)) is None:
                raise AccountError(
                    f"no account for {email}: add it with `gateway user add {email}`, or invite"
                    f" it with `gateway user invite {email} --tenant NAME`"
                )

    def _check_tenant(self, tenant: str) -> None:
        if tenant not in self.config.tenants:
            raise AccountError(f"no tenant {tenant!r} (see `gateway tenant list`)")

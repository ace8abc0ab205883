"""Password hashing with argon2id (argon2-cffi), and the rules a new password must follow.

Verifying is deliberately slow (~0.1 s with the defaults): callers on the event loop go through
asyncio.to_thread. Checking a password for an email that has no account costs the same as for
one that has: it is verified against a dummy hash made with the same parameters.
"""

from __future__ import annotations

import re
import secrets

import argon2

from ..config import AuthSettings
from ..errors import AccountError

# Enough to catch typos and pasted text, not to validate deliverability (RFC 5321 allows more).
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,190}")
MAX_PASSWORD_LENGTH = 1024  # argon2 cost does not depend on it, but request bodies should be small


def normalise_email(email: str) -> str:
    """The form accounts are stored and looked up by: trimmed, lower case."""
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise AccountError(f"{email!r} is not an email address")
    return email


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self.min_length = settings.password_min_length
        self._hasher = argon2.PasswordHasher(
            time_cost=settings.password_time_cost,
            memory_cost=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            type=argon2.Type.ID,
        )
        self._dummy: str | None = None

    def check_new(self, password: str) -> None:
        """Raise AccountError saying why `password` cannot be used, if it cannot."""
        if len(password) < self.min_length:
            raise AccountError(f"The password must have at least {self.min_length} characters.")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise AccountError(f"The password must have at most {MAX_PASSWORD_LENGTH} characters.")

    def hash(self, password: str) -> str:
        self.check_new(password)
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no stored hash, spend the same time and say no."""
        if stored_hash is None:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_hex(16))
            self._matches(self._dummy, password)
            return False
        return self._matches(stored_hash, password)

    def _matches(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password[:MAX_PASSWORD_LENGTH])
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters than the configured ones."""
        return self._hasher.check_needs_rehash(stored_hash)

    def rehash(self, password: str) -> str:
        """A hash with the current parameters of a password already accepted (no length rules)."""
        return self._hasher.hash(password)

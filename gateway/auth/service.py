"""Auth: who a request comes from, and what they may see. One per gateway process.

On the tenant path, `identity()` runs for every proxied request:

    no Cookie, no Authorization        public: NO_IDENTITY at once (no lookup, no allocation)
                                       private: sign in first
    Authorization: Bearer gwt_...      the API token's account (401 if revoked or unknown)
    a gateway_session cookie           the session's account, if it is live
    -> public tenant, or a member      forward, with a ds_actor minted for this tenant
    -> private tenant, anonymous       browsers: 303 to the apex sign-in; scripts: 401
    -> private tenant, not a member    403

Sessions and tokens are read from the accounts database at most once per `session_cache_s`
(and once at a time per key, however many requests ask at once), then trusted from memory.
Sign-out deletes the session in the database and evicts it from this process's memory at
once; other processes (an upgrade hand-over) and CLI changes are seen within session_cache_s.

Hand-off ("tickets"). The session cookie is set for the whole domain, so tenant hosts normally
see it. Some browsers do not share it: Chromium keeps a `Domain=localhost` cookie on
localhost only (localhost is a top-level name to it), which is the demo's domain. When a
private tenant gets a browser with no session, it sets a random `gateway_state` cookie on its
own host and sends the browser to the apex sign-in with that state. The apex, once the user is
signed in, makes a one-time ticket (60 s) bound to the session, the tenant and the state, and
sends the browser back to `<tenant>/-/gateway-signin?ticket=...`. The tenant host redeems it
only with the matching state cookie (so a ticket made for someone else's session cannot sign a
victim in: login CSRF) and sets a host-only session for that tenant, a child of the sign-in
session: signing out deletes both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode

from ..asgi import Scope, header, joined_header, wants_json
from ..config import Config, TenantConfig
from ..errors import AccountError, NotAMember, SignInRequired, Unauthorized
from ..identity import NO_IDENTITY, OWNED_COOKIES, Identity
from ..keys import tenant_secret
from .actor import ActorMinter
from .cookies import (
    SESSION_COOKIE,
    STATE_COOKIE,
    cookie_values,
    set_cookie,
)
from .csrf import Csrf
from .passwords import Passwords, normalise_email
from .store import ACCOUNTS_FILE, AccountStore, Invite, Principal, digest
from .throttle import Throttle
from .urls import host_port, origin

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

TOKEN_PREFIX = "gwt_"
TICKET_TTL_S = 60.0
STATE_TTL_S = 600
_MAX_CACHED = 10_000
_SESSION = SESSION_COOKIE.encode()
_STATE = STATE_COOKIE.encode()

# What a tenant sees of an anonymous visitor who sent cookies: none of the gateway's.
ANONYMOUS = Identity(strip_cookies=OWNED_COOKIES)
# A response made for one user must not be stored by shared caches (or served to another).
PRIVATE_RESPONSE = [(b"cache-control", b"private, no-store"), (b"vary", b"Cookie, Authorization")]


class SignInRefused(Exception):
    """A sign-in attempt that failed; the message is shown on the form."""

    def __init__(self, message: str, *, status: int, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Cached:
    principal: Principal | None
    fresh_until: float


class Auth:
    def __init__(self, config: Config, master_key: bytes) -> None:
        self.master_key = master_key
        self.store = AccountStore(config.gateway.paths.state_dir / ACCOUNTS_FILE)
        self.csrf = Csrf(master_key)
        self.throttle = Throttle(config.gateway.auth)
        self.configure(config)
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Future[Principal | None]] = {}
        self._evictions = 0
        self._minters: dict[str, ActorMinter] = {}
        self._actors: dict[tuple[str, str], tuple[bytes, float]] = {}
        # Password hashing is slow and takes 64 MiB a go: two at a time, on threads of their
        # own, so a flood of sign-ins neither exhausts memory nor delays session lookups.
        self._hashing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="argon2")

    def configure(self, config: Config) -> None:
        """Take new settings (at start and on reload)."""
        settings = config.gateway.auth
        self.settings = settings
        self.domain = config.domain
        self.tls = config.tls_enabled
        self.throttle.settings = settings
        self.passwords = Passwords(settings)

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)

    # --- the request path -----------------------------------------------------------------------

    async def identity(self, scope: Scope, tenant: TenantConfig) -> Identity:
        """What `tenant`'s Datasette should see of this request; raises to answer instead."""
        cookie, authorization, host = _credentials(scope)
        public = tenant.settings.public
        if cookie is None and authorization is None:
            if public:
                return NO_IDENTITY
            raise self._sign_in_required(scope, host, tenant.name, None)
        principal, by_token = await self._principal(cookie, authorization, tenant.name)
        if principal is None:
            if public:
                return ANONYMOUS
            raise self._sign_in_required(scope, host, tenant.name, cookie)
        if not public and tenant.name not in principal.tenants:
            raise NotAMember(
                f"You are signed in as {principal.email}, who is not a member of the private"
                f" site {tenant.name!r}. Ask its owner to add you, or sign in as someone else.",
                tenant=tenant.name,
            )
        return Identity(
            strip_cookies=OWNED_COOKIES,
            add_cookie=b"ds_actor=" + self._actor_cookie(principal.email, tenant.name),
            strip_authorization=by_token,
            extra_response_headers=PRIVATE_RESPONSE,
            user=principal.email,
        )

    async def member(self, scope: Scope, tenant: TenantConfig, *, api: bool) -> Principal:
        """The member of `tenant` this request comes from (by session or API token), public
        tenant or not. Anyone else is turned away: sent to sign in (`api`: 401), or 403."""
        cookie, authorization, host = _credentials(scope)
        principal, _ = await self._principal(cookie, authorization, tenant.name)
        reason = f"Only members of {tenant.name!r} may change its data"
        if principal is None:
            raise self._sign_in_required(scope, host, tenant.name, cookie, reason=reason,
                                         api=api)
        if tenant.name not in principal.tenants:
            raise NotAMember(f"You are signed in as {principal.email}, who is not a member of"
                             f" {tenant.name!r}: only its members may change its data.",
                             tenant=tenant.name)
        return principal

    async def _principal(self, cookie: bytes | None, authorization: bytes | None,
                         tenant: str | None) -> tuple[Principal | None, bool]:
        token = _bearer_token(authorization)
        if token is not None:
            principal = await self._lookup("t:" + digest(token), self._load_token)
            if principal is None:
                raise Unauthorized(
                    "This API token is not valid: it was revoked, or its account was removed.",
                    tenant=tenant, headers=[self._www_authenticate()],
                )
            return principal, True
        return await self.session_principal(cookie, tenant), False

    async def session_principal(self, cookie: bytes | None, tenant: str | None
                                ) -> Principal | None:
        """The live session among the request's session cookies, valid on `tenant` (None: the
        apex, where only sign-in sessions count)."""
        for value in cookie_values(cookie, _SESSION) if cookie else ():
            if not _is_code(value):  # not one we made: no need to ask the database
                continue
            principal = await self._lookup("s:" + digest(value), self._load_session)
            if principal is not None and principal.only_tenant in (None, tenant):
                return principal
        return None

    def _sign_in_required(self, scope: Scope, host: bytes | None, tenant: str,
                          cookie: bytes | None, *, reason: str = "", api: bool | None = None
                          ) -> SignInRequired | Unauthorized:
        apex = origin(scope["scheme"], self.domain, host_port(host))
        if api is None:
            api = wants_json(scope["path"], scope["headers"])
        if api:
            return Unauthorized(
                f"{reason or f'The site {tenant!r} is private'}. Sign in at {apex}/-/login, or"
                " send an API token (`gateway user token EMAIL`) as 'Authorization: Bearer"
                " <token>'.",
                tenant=tenant, headers=[self._www_authenticate()],
            )
        states = cookie_values(cookie, _STATE) if cookie else []
        state = next((s for s in states if _is_code(s)), None) or secrets.token_urlsafe(24)
        here = origin(scope["scheme"], f"{tenant}.{self.domain}", host_port(host))
        target = here + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        location = f"{apex}/-/login?" + urlencode({"next": target, "state": state})
        return SignInRequired(
            f"{reason}: sign in first." if reason else
            f"The site {tenant!r} is private: sign in to see it.",
            tenant=tenant,
            headers=[
                (b"location", location.encode()),
                set_cookie(STATE_COOKIE, state, max_age_s=STATE_TTL_S, secure=self.tls),
            ],
        )

    def _www_authenticate(self) -> tuple[bytes, bytes]:
        return b"www-authenticate", f'Bearer realm="{self.domain}"'.encode()

    def _actor_cookie(self, email: str, tenant: str) -> bytes:
        """A ds_actor for `tenant`, re-minted once a minute (minting costs ~30 µs)."""
        now = time.time()
        cached = self._actors.get((email, tenant))
        if cached is not None and now < cached[1]:
            return cached[0]
        minter = self._minters.get(tenant)
        if minter is None:
            minter = self._minters[tenant] = ActorMinter(tenant_secret(self.master_key, tenant))
        value = minter.mint({"id": email}, now)
        _bounded_put(self._actors, (email, tenant), (value, now + 60))
        return value

    # --- the cache ------------------------------------------------------------------------------

    async def _lookup(self, key: str, load: Callable[[str, float], Principal | None]
                      ) -> Principal | None:
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and now < cached.fresh_until:
            principal = cached.principal
            return principal if principal is not None and now < principal.expires else None
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._load(key, load, now))
        return await asyncio.shield(loading)

    async def _load(self, key: str, load: Callable[[str, float], Principal | None],
                    now: float) -> Principal | None:
        evictions = self._evictions
        try:
            principal = await asyncio.to_thread(load, key[2:], now)
        finally:
            del self._loading[key]
        if evictions == self._evictions:  # not read before a sign-out that has since evicted it
            fresh_until = now + self.settings.session_cache_s
            _bounded_put(self._cache, key, _Cached(principal, fresh_until))
        return principal

    def _load_session(self, id_hash: str, now: float) -> Principal | None:
        settings = self.settings
        return self.store.session(id_hash, now, settings.session_idle_s, settings.session_max_s)

    def _load_token(self, token_hash: str, now: float) -> Principal | None:
        return self.store.token(token_hash, now)

    def forget_session(self, root_hash: str) -> None:
        self._evictions += 1
        for key in [k for k, c in self._cache.items()
                    if c.principal is not None and c.principal.session_root == root_hash]:
            del self._cache[key]

    # --- signing in and out ---------------------------------------------------------------------

    async def sign_in(self, email: str, password: str, address: str,
                      previous_sessions: list[str]) -> str:
        """Check the password and start a new session (ending the browser's previous ones);
        return the new session id. Raises SignInRefused."""
        try:
            email = normalise_email(email)
        except AccountError:
            email = email.strip().lower()  # still throttled, and answered like a wrong password
        wait_s = self.throttle.wait_s(email, address, time.time())
        if wait_s > 0:
            seconds = math.ceil(wait_s)
            raise SignInRefused(
                f"Too many failed attempts to sign in. Try again in {seconds} seconds.",
                status=429, retry_after_s=seconds,
            )
        self.throttle.attempt(email, address, time.time())  # counted now: parallel guesses too
        session_id = secrets.token_urlsafe(32)
        replaced = [digest(value) for value in previous_sessions]
        signed_in = await self._hash(self._open_session, email, password, digest(session_id),
                                     replaced)
        if not signed_in:
            raise SignInRefused("The email address or the password is not right.", status=400)
        self.throttle.succeeded(email, address)
        for root_hash in replaced:
            self.forget_session(root_hash)
        return session_id

    def _open_session(self, email: str, password: str, id_hash: str,
                      replaced: list[str]) -> bool:
        user_id, stored_hash = self.store.credentials(email) or (0, None)
        if not self.passwords.verify(stored_hash, password) or stored_hash is None:
            return False
        rehashed = (self.passwords.rehash(password)
                    if self.passwords.needs_rehash(stored_hash) else None)
        now = time.time()
        self.store.sign_in(id_hash, user_id, now, replaces=replaced, new_password_hash=rehashed)
        self.store.purge_expired(now, self.settings.session_idle_s, self.settings.session_max_s)
        return True

    async def sign_out(self, principal: Principal) -> None:
        """End the sign-in session everywhere: on the apex and on every tenant host."""
        await asyncio.to_thread(self.store.delete_session, principal.session_root)
        self.forget_session(principal.session_root)

    async def invite(self, code: str) -> Invite | None:
        if not _is_code(code):
            return None
        return await asyncio.to_thread(self.store.invite, digest(code), time.time())

    async def accept_invite(self, code: str, password: str) -> str:
        """Create the invited account, sign it in; return the session id. Raises AccountError."""
        session_id = secrets.token_urlsafe(32)
        await self._hash(self._accept_invite, code, password, digest(session_id))
        return session_id

    def _accept_invite(self, code: str, password: str, id_hash: str) -> None:
        password_hash = self.passwords.hash(password)
        self.store.accept_invite(digest(code), password_hash, id_hash, time.time())

    async def _hash(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hashing, function, *args)

    # --- hand-off to tenant hosts ---------------------------------------------------------------

    async def issue_ticket(self, session_root: str, tenant: str, state: str) -> str:
        code = secrets.token_urlsafe(32)
        await asyncio.to_thread(self.store.add_ticket, digest(code), session_root, tenant,
                                digest(state), time.time() + TICKET_TTL_S)
        return code

    async def redeem_ticket(self, code: str, tenant: str, state: str) -> str | None:
        """The tenant host's new session id, or None if the ticket is unknown, used, expired,
        or was made for another tenant or another browser (state)."""
        if not _is_code(code) or not _is_code(state):
            return None
        session_id = secrets.token_urlsafe(32)
        redeemed = await asyncio.to_thread(self.store.redeem_ticket, digest(code), tenant,
                                           digest(state), digest(session_id), time.time())
        return session_id if redeemed else None


def _credentials(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The request's cookies (all Cookie headers joined), Authorization and Host, in one pass
    over the headers: this runs on every proxied request."""
    headers = scope["headers"]
    return (joined_header(headers, b"cookie", b";"), header(headers, b"authorization"),
            header(headers, b"host"))


def _bearer_token(authorization: bytes | None) -> str | None:
    """A gateway API token from `Authorization: Bearer gwt_...`; other credentials are the
    tenant's business and pass through untouched."""
    if authorization is None:
        return None
    scheme, _, credentials = authorization.partition(b" ")
    credentials = credentials.strip()
    if scheme.lower() != b"bearer" or not credentials.startswith(TOKEN_PREFIX.encode()):
        return None
    return credentials.decode("latin-1")


def _is_code(value: str) -> bool:
    """A value we made with secrets.token_urlsafe (so safe to hash, log-free, URL-safe)."""
    return 16 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


def _bounded_put(mapping: dict[K, V], key: K, value: V) -> None:
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > _MAX_CACHED:
        del mapping[next(iter(mapping))]

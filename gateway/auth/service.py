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
see it. Some browsers do not share it: Chromium keeps a `Domain=localhost` cookie on localhost
only (localhost is a top-level name to it), which is the demo's domain. Whenever the apex sends a
signed-in browser on to a tenant, it goes through the tenant's /-/gateway-signin (web.py), which
ends at once where the host sees the session, and otherwise brings it over:

    1 tenant  /x, no session             -> apex /-/login?next=<tenant's origin>/x
    2 apex    signed in, session R       -> tenant /-/gateway-signin?pass=P&next=/x
              P = (time, HMAC(R, tenant, time)): handoff.py
    3 tenant  sees a session: -> /x. Else a random state S in a host-only cookie (one it made
              earlier, if any)     -> apex /-/login?next=<tenant>/x&state=S&pass=P
    4 apex    P made for this browser's R, < 2 min ago: a ticket T (one use, 60 s) bound to R,
              the tenant and S     -> tenant /-/gateway-signin?ticket=T&next=/x
              Any other P (none, stale, another session's): back to 2; S is ignored.
    5 tenant  T redeemed with the state cookie: a host-only session for this tenant only, a
              child of R (signing out ends both) -> /x

Threat model. An attacker can make a victim's browser open any URL (links, forms, redirects),
run a server on any port, and may later see URLs the victim's browser opened (history, a
proxy's log); they cannot read the victim's HttpOnly cookies or a TLS connection. A tenant's own
code is trusted on its own host only. What a stolen ticket is worth is a session, to whoever
holds the state cookie it is bound to; so:
- Tickets and passes travel only to the gateway's own public origin for the tenant: scheme and
  port come from the configuration (with TLS on, https on the HTTPS port, never plain HTTP),
  never from `next`, of which only the path is kept (issue 12: a `next` on port 9999 sent the
  victim's ticket to the attacker's server).
- A ticket is bound only to a state vouched for by a pass made for the session of the browser
  that asks (step 4). A state in a link someone else made comes without such a pass (the
  attacker has no pass for the victim's session) and is ignored, so the state always comes from
  the browser that will redeem the ticket, never from the URL. A leaked ticket is worthless
  without that browser's state cookie, and is spent by the first attempt to redeem it.
- Login CSRF (signing a victim in as the attacker): the tenant host makes its state itself and
  never takes one from a URL, so a ticket made for the attacker's session cannot match it.
- Passes grant nothing by themselves: at worst a leaked one lets a link bind a ticket, which
  still goes to the real tenant host in the victim's own browser, where it fails.
Every failure has a way on (issue 13): a spent or expired ticket with a session for the host
lands on the page wanted; else the sign-in page says what happened.

Public tenants on a single-label domain (the demo's `localhost`): a browser that arrives from
elsewhere (not a same-origin navigation) with no session and no `gateway_checked` cookie is sent
once through the apex (`/-/login?silent=1`), which hands its session over if it has one, or
sends it back marked as checked for CHECKED_TTL_S, so that members are known there as on a real
domain.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode

from ..asgi import Scope, header, joined_header, wants_json
from ..config import Config, TenantConfig
from ..errors import AccountError, MembersOnly, NotAMember, SignInRequired, Unauthorized
from ..identity import NO_IDENTITY, OWNED_COOKIES, Identity
from ..keys import tenant_secret
from ..words import plural
from .actor import ActorMinter
from .cookies import CHECKED_COOKIE, SESSION_COOKIE, cookie_values
from .csrf import Csrf
from .handoff import Passes
from .passwords import Passwords, normalise_email
from .store import Invite, Principal, digest
from .stores import open_store
from .throttle import Admission, Throttle
from .urls import public_origin

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

TOKEN_PREFIX = "gwt_"
TICKET_TTL_S = 60.0
_MAX_CACHED = 10_000
_SESSION = SESSION_COOKIE.encode()
_CHECKED = CHECKED_COOKIE.encode() + b"="

log = logging.getLogger(__name__)

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
        self.store = open_store(config)
        self.csrf = Csrf(master_key)
        self.passes = Passes(master_key)
        self.bound_ports: dict[str, int] = {}
        self.config, self.settings = config, config.gateway.auth
        self.throttle = self.new_throttle("sign-in")
        self.configure(config)
        self._cache: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Future[Principal | None]] = {}
        self._evictions = 0
        self._minters: dict[str, ActorMinter] = {}
        self._actors: dict[tuple[str, str, str | None], tuple[bytes, float]] = {}
        # Password hashing is slow and takes 64 MiB a go: two at a time, on threads of their
        # own, so a flood of sign-ins neither exhausts memory nor delays session lookups.
        self._hashing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="argon2")

    def configure(self, config: Config) -> None:
        """Take new settings (at start and on reload)."""
        settings = config.gateway.auth
        self.config = config
        self.settings = settings
        self.domain = config.domain
        self.tls = config.tls_enabled
        # Browsers keep a Domain cookie of a single-label domain (localhost) on that host only.
        self.silent_check = "." not in config.domain
        self.throttle.settings = settings
        self.passwords = Passwords(settings)

    def new_throttle(self, kind: str) -> Admission:
        """Failures counted by this process; in a cluster, by every edge together."""
        if self.config.gateway.cluster.etcd_endpoints:
            from ..cluster.throttle import SharedThrottle

            return SharedThrottle.for_store(self.store, self.settings, kind)
        return Throttle(self.settings)

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def listening(self, ports: dict[str, int]) -> None:
        """The ports the listeners got (by name), for a configured port 0."""
        self.bound_ports = ports

    def origin(self, tenant: str | None = None) -> str:
        """The gateway's own public origin for `tenant` (None: the apex); see urls.public_origin."""
        host = f"{tenant}.{self.domain}" if tenant else None
        return public_origin(self.config, host, self.bound_ports)

    # --- the request path -----------------------------------------------------------------------

    async def identity(self, scope: Scope, tenant: TenantConfig) -> Identity:
        """What `tenant`'s Datasette should see of this request; raises to answer instead."""
        cookie, authorization = _credentials(scope)
        public = tenant.settings.public
        if cookie is None and authorization is None:
            if public:
                if self.silent_check and _is_arrival(scope, None):
                    raise self._silent_check(scope, tenant.name)
                return NO_IDENTITY
            raise self._sign_in_required(scope, tenant.name, None)
        principal, by_token = await self._principal(cookie, authorization, tenant.name)
        if principal is None:
            if public:
                if self.silent_check and authorization is None and _is_arrival(scope, cookie):
                    raise self._silent_check(scope, tenant.name)
                return ANONYMOUS
            raise self._sign_in_required(scope, tenant.name, cookie)
        if not public and tenant.name not in principal.tenants:
            raise NotAMember(
                f"You are signed in as {principal.email}, who is not a member of the private"
                f" site {tenant.name!r}. Ask its owner to add you, or sign in as someone else.",
                tenant=tenant.name,
            )
        return Identity(
            strip_cookies=OWNED_COOKIES,
            add_cookie=b"ds_actor=" + self._actor_cookie(principal, tenant.name),
            strip_authorization=by_token,
            extra_response_headers=PRIVATE_RESPONSE,
            user=principal.email,
        )

    async def member(self, scope: Scope, tenant: TenantConfig, *, api: bool,
                     owner: bool = False) -> Principal:
        """The member (`owner`: an owner) of `tenant` this request comes from (by session or
        API token), public tenant or not. Anyone else is turned away: sent to sign in (`api`:
        401), or 403."""
        cookie, authorization = _credentials(scope)
        principal, _ = await self._principal(cookie, authorization, tenant.name)
        who, what = ("owners", "do this") if owner else ("members", "change its data")
        if principal is None:
            raise self._sign_in_required(scope, tenant.name, cookie, api=api,
                                         reason=f"Only {who} of {tenant.name!r} may {what}")
        if tenant.name not in (principal.owner_of if owner else principal.tenants):
            raise MembersOnly(f"You are signed in as {principal.email}, who is not"
                             f" {'an owner' if owner else 'a member'} of {tenant.name!r}:"
                             f" only its {who} may {what}.", tenant=tenant.name)
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
            if not is_code(value):  # not one we made: no need to ask the database
                continue
            principal = await self._lookup("s:" + digest(value), self._load_session)
            if principal is not None and principal.only_tenant in (None, tenant):
                return principal
        return None

    def _sign_in_required(self, scope: Scope, tenant: str, cookie: bytes | None, *,
                          reason: str = "", api: bool | None = None
                          ) -> SignInRequired | Unauthorized:
        if api is None:
            api = wants_json(scope["path"], scope["headers"])
        if api:
            return Unauthorized(
                f"{reason or f'The site {tenant!r} is private'}. Sign in at"
                f" {self.origin()}/-/login, or send an API token (`gateway user token EMAIL`) as"
                " 'Authorization: Bearer <token>'.",
                tenant=tenant, headers=[self._www_authenticate()],
            )
        ended = cookie is not None and any(
            is_code(value) for value in cookie_values(cookie, _SESSION))
        return SignInRequired(
            f"{reason}: sign in first." if reason else
            f"The site {tenant!r} is private: sign in to see it.",
            tenant=tenant,
            headers=[(b"location", self.sign_in_url(scope, tenant,
                                                    reason="ended" if ended else "").encode())],
        )

    def _silent_check(self, scope: Scope, tenant: str) -> SignInRequired:
        return SignInRequired("Checking whether you are signed in.", tenant=tenant, headers=[
            (b"location", self.sign_in_url(scope, tenant, silent=True).encode())])

    def sign_in_url(self, scope: Scope, tenant: str, *, reason: str = "",
                    silent: bool = False) -> str:
        """The apex's sign-in page, to come back to this request's page on `tenant`."""
        target = self.origin(tenant) + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        query = {"next": target, **({"reason": reason} if reason else {}),
                 **({"silent": "1"} if silent else {})}
        return f"{self.origin()}/-/login?" + urlencode(query)

    def _www_authenticate(self) -> tuple[bytes, bytes]:
        return b"www-authenticate", f'Bearer realm="{self.domain}"'.encode()

    def _actor_cookie(self, principal: Principal, tenant: str) -> bytes:
        """A ds_actor for `tenant`, re-minted once a minute (minting costs ~30 µs). The actor
        carries the role ("owner", "member"; none for others), for metadata `allow` blocks."""
        now = time.time()
        role = principal.role(tenant)
        key = (principal.email, tenant, role)
        cached = self._actors.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        minter = self._minters.get(tenant)
        if minter is None:
            minter = self._minters[tenant] = ActorMinter(tenant_secret(self.master_key, tenant))
        actor = {"id": principal.email, "role": role} if role else {"id": principal.email}
        value = minter.mint(actor, now)
        _bounded_put(self._actors, key, (value, now + 60))
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
        try:  # counted now (unless it must wait): parallel guesses too
            wait_s = await self.throttle.admit(email, address, time.time())
        except AccountError as exc:  # a cluster's store that does not answer
            raise SignInRefused(str(exc), status=503) from exc
        if wait_s > 0:
            seconds = math.ceil(wait_s)
            log.info("sign_in_throttled", extra={"email": email, "address": address,
                                                 "retry_after_s": seconds})
            raise SignInRefused(
                f"Too many failed attempts to sign in. Try again in {plural(seconds, 'second')}.",
                status=429, retry_after_s=seconds,
            )
        session_id = secrets.token_urlsafe(32)
        replaced = [digest(value) for value in previous_sessions]
        try:
            signed_in = await self._hash(self._open_session, email, password,
                                         digest(session_id), replaced)
        except AccountError as exc:  # a cluster's store that stopped answering meanwhile
            raise SignInRefused(str(exc), status=503) from exc
        if not signed_in:
            log.info("sign_in_failed", extra={"email": email, "address": address})
            raise SignInRefused("The email address or the password is not right.", status=400)
        await self.throttle.forgive(email, address)
        log.info("signed_in", extra={"email": email, "address": address})
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
        log.info("signed_out", extra={"email": principal.email})

    async def invite(self, code: str) -> Invite | None:
        if not is_code(code):
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

    def make_pass(self, session_root: str, tenant: str) -> str:
        return self.passes.make(session_root, tenant, time.time())

    def accepts_pass(self, value: str, session_root: str, tenant: str) -> bool:
        return self.passes.accepts(value, session_root, tenant, time.time())

    async def issue_ticket(self, session_root: str, tenant: str, state: str) -> str:
        code = secrets.token_urlsafe(32)
        await asyncio.to_thread(self.store.add_ticket, digest(code), session_root, tenant,
                                digest(state), time.time() + TICKET_TTL_S)
        return code

    async def redeem_ticket(self, code: str, tenant: str, state: str) -> str | None:
        """The tenant host's new session id, or None if the ticket is unknown, used, expired,
        or was made for another tenant or another browser (state)."""
        if not is_code(code):
            return None
        session_id = secrets.token_urlsafe(32)
        state_hash = digest(state) if is_code(state) else ""  # no state: spent all the same
        redeemed = await asyncio.to_thread(self.store.redeem_ticket, digest(code), tenant,
                                           state_hash, digest(session_id), time.time())
        return session_id if redeemed else None


def _credentials(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The request's cookies (all Cookie headers joined) and Authorization: this runs on every
    proxied request."""
    headers = scope["headers"]
    return joined_header(headers, b"cookie", b";"), header(headers, b"authorization")


def _is_arrival(scope: Scope, cookie: bytes | None) -> bool:
    """A browser opening a page of this host from elsewhere (not a click within the host, not a
    script), not checked lately: where a public tenant looks for the apex's session."""
    if scope["method"] != "GET" or (cookie is not None and _CHECKED in cookie):
        return False
    mode = site = accept = b""
    for name, value in scope["headers"]:
        if name == b"sec-fetch-mode":
            mode = value
        elif name == b"sec-fetch-site":
            site = value
        elif name == b"accept":
            accept = value
    if mode:
        return mode == b"navigate" and site != b"same-origin"
    return b"text/html" in accept


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


def is_code(value: str) -> bool:
    """A value we made with secrets.token_urlsafe (so safe to hash, log-free, URL-safe)."""
    return 16 <= len(value) <= 64 and all(c.isalnum() or c in "-_" for c in value)


def _bounded_put(mapping: dict[K, V], key: K, value: V) -> None:
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > _MAX_CACHED:
        del mapping[next(iter(mapping))]

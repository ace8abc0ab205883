"""Accounts their users run themselves, on the apex.

    GET  /-/account                   the account page: password, sessions, API tokens
    POST /-/account/password          change the password (other sessions end)
    POST /-/account/sessions/end      end one of the account's sessions
    POST /-/account/tokens            create an API token (shown once, on the answer)
    POST /-/account/tokens/revoke     revoke one of the account's tokens
    GET/POST /-/forgot                ask for a reset link by email
    GET/POST /-/reset/{code}          choose a new password with that link

"Forgot password" never tells whether an account exists: every request gets the same answer
at once, and the lookup and the email happen afterwards, in the background. Requests are
throttled per email address and per client address (throttle.py). Every form carries a CSRF
token (csrf.py, through web._Form).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AccountError, RequestError
from ..mail import Mailer, MailError
from ..words import plural
from .accounts import new_token
from .passwords import normalise_email
from .store import Principal, digest
from .urls import host_port, origin
from .web import _EXPIRED_FORM, _Form, _read_form, _redirect, _session_cookie

if TYPE_CHECKING:
    from ..runtime import Gateway
    from .service import Auth

log = logging.getLogger(__name__)

DAY_S = 86400
# What the token form offers; 0 is "never".
TOKEN_LIFETIMES_DAYS = (7, 30, 90, 365, 0)
MAX_TOKEN_NAME = 100
_DONE = {
    "password": "Your password has been changed. Your other sessions have ended.",
    "session": "The session has ended.",
    "revoked": "The token has been revoked: it no longer works.",
}

Handler = Callable[[Request], Awaitable[Response]]
Action = Callable[["_Form", Principal, dict[str, str]], Awaitable[Response]]


class AccountPages:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.auth: Auth = gateway.auth
        self.reset_throttle = self.auth.new_throttle("reset")
        self._background: set[asyncio.Task[None]] = set()

    @property
    def mailer(self) -> Mailer | None:
        config = self.gateway.config
        return Mailer.configured(config.gateway.smtp, config.domain)

    def apex(self, request: Request) -> str:
        return origin(request.url.scheme, self.auth.domain,
                      host_port(request.headers.get("host", "").encode()))

    async def form(self, request: Request) -> _Form:
        cookie = request.headers.get("cookie", "").encode()
        return _Form(request, self.auth, await self.auth.session_principal(cookie, None))

    def routes(self) -> list[Route]:
        return [
            Route("/-/account", self.account),
            Route("/-/account/password", self.signed_in(self.change_password),
                  methods=["POST"]),
            Route("/-/account/sessions/end", self.signed_in(self.end_session), methods=["POST"]),
            Route("/-/account/tokens", self.signed_in(self.create_token), methods=["POST"]),
            Route("/-/account/tokens/revoke", self.signed_in(self.revoke_token),
                  methods=["POST"]),
            Route("/-/forgot", self.forgot, methods=["GET", "POST"]),
            Route("/-/reset/{code}", self.reset, methods=["GET", "POST"]),
        ]

    # --- the account page ---------------------------------------------------------------------

    async def account(self, request: Request) -> Response:
        form = await self.form(request)
        if form.principal is None:
            return _redirect("/-/login?next=/-/account")
        return await self.render_account(form, form.principal, notice=_DONE.get(
            request.query_params.get("done", ""), ""))

    async def render_account(self, form: _Form, principal: Principal, status: int = 200,
                             **context: object) -> Response:
        settings = self.auth.settings
        store = self.auth.store
        sessions = await asyncio.to_thread(store.sessions, principal.user_id, time.time(),
                                           settings.session_idle_s, settings.session_max_s)
        tokens = await asyncio.to_thread(store.tokens, principal.email)
        context.setdefault("notice", "")
        return form.render("account.html", status, title="Your account", sessions=sessions,
                           current_session=principal.session_root, tokens=tokens,
                           now=time.time(), lifetimes=TOKEN_LIFETIMES_DAYS,
                           max_token_name=MAX_TOKEN_NAME, **context)

    def signed_in(self, action: Action) -> Handler:
        """A POST of the account page: signed in, with a valid CSRF token, or turned away."""

        async def handler(request: Request) -> Response:
            form = await self.form(request)
            if form.principal is None:
                return _redirect("/-/login?next=/-/account")
            fields = await _read_form(request)
            if not form.accepts(fields):
                return await self.render_account(form, form.principal, 403, error=_EXPIRED_FORM)
            return await action(form, form.principal, fields)

        return handler

    async def change_password(self, form: _Form, principal: Principal,
                             fields: dict[str, str]) -> Response:
        new = fields.get("new_password", "")
        try:
            if new != fields.get("confirm", ""):
                raise AccountError("The two new passwords are not the same.")
            await self._change_password(principal, fields.get("password", ""), new,
                                        form.request.client.host if form.request.client else "")
        except AccountError as exc:
            return await self.render_account(form, principal, 400, password_error=str(exc))
        return _redirect("/-/account?done=password")

    async def _change_password(self, principal: Principal, current: str, new: str,
                               address: str) -> None:
        auth = self.auth
        throttle = auth.throttle
        wait_s = await throttle.admit(principal.email, address, time.time())
        if wait_s > 0:
            raise AccountError("Too many wrong passwords. Try again in"
                               f" {plural(math.ceil(wait_s), 'second')}.")
        stored = await asyncio.to_thread(auth.store.credentials, principal.email)
        if not await auth._hash(auth.passwords.verify, stored[1] if stored else None, current):
            raise AccountError("Your current password is not right.")
        await throttle.forgive(principal.email, address)
        settings = auth.settings
        others = await asyncio.to_thread(auth.store.sessions, principal.user_id, time.time(),
                                         settings.session_idle_s, settings.session_max_s)
        new_hash = await auth._hash(auth.passwords.hash, new)
        await asyncio.to_thread(auth.store.set_password, principal.email, new_hash,
                                keep_session=principal.session_root)
        for session in others:
            if session.id_hash != principal.session_root:
                auth.forget_session(session.id_hash)
        log.info("password_changed", extra={"user": principal.email})

    async def end_session(self, form: _Form, principal: Principal,
                         fields: dict[str, str]) -> Response:
        session = fields.get("session", "")
        ended = await asyncio.to_thread(self.auth.store.end_session, principal.user_id, session)
        if ended:
            self.auth.forget_session(session)
        if session == principal.session_root:
            response = _redirect("/-/login?signed_out=1")
            response.raw_headers.append(_session_cookie(self.auth, ""))
            return response
        return _redirect("/-/account?done=session")

    async def create_token(self, form: _Form, principal: Principal,
                          fields: dict[str, str]) -> Response:
        name = fields.get("name", "").strip()
        days = fields.get("expires_days", "")
        if not name or len(name) > MAX_TOKEN_NAME:
            return await self.render_account(
                form, principal, 400, token_error=f"Give the token a name (at most {MAX_TOKEN_NAME}"
                " characters), so that you know later what it is for.")
        if not days.isdigit() or int(days) not in TOKEN_LIFETIMES_DAYS:
            return await self.render_account(form, principal, 400,
                                             token_error="Choose when the token expires.")
        now = time.time()
        expires = now + int(days) * DAY_S if int(days) else None
        token_id, token = new_token()
        await asyncio.to_thread(self.auth.store.add_token, principal.email, token_id,
                                digest(token), name, now, expires)
        log.info("token_created", extra={"user": principal.email, "token_id": token_id})
        return await self.render_account(form, principal, new_token=token, new_token_name=name)

    async def revoke_token(self, form: _Form, principal: Principal,
                          fields: dict[str, str]) -> Response:
        token_id = fields.get("token", "")
        try:
            await asyncio.to_thread(self.auth.store.revoke_token, token_id,
                                    user_id=principal.user_id)
        except AccountError:
            return await self.render_account(form, principal, 404,
                                             token_error="That token does not exist (any more).")
        log.info("token_revoked", extra={"user": principal.email, "token_id": token_id})
        return _redirect("/-/account?done=revoked")

    # --- forgot password ------------------------------------------------------------------------

    async def forgot(self, request: Request) -> Response:
        form = await self.form(request)
        mailer = self.mailer
        if request.method == "GET" or mailer is None:
            return form.render("forgot.html", title="Forgot your password?", mail=bool(mailer),
                               email="", sent=False)
        fields = await _read_form(request)
        email = fields.get("email", "").strip()
        if not form.accepts(fields):
            return form.render("forgot.html", 403, title="Forgot your password?", mail=True,
                               email=email, sent=False, error=_EXPIRED_FORM)
        address = request.client.host if request.client else ""
        self.reset_throttle.settings = self.auth.settings  # as reloaded
        try:
            email = normalise_email(email)
            wait_s = await self.reset_throttle.admit(email, address, time.time())
        except AccountError as exc:  # not an email address; a cluster's store not answering
            return form.render("forgot.html", 503 if isinstance(exc, RequestError) else 400,
                               title="Forgot your password?", mail=True, email=email,
                               sent=False, error=str(exc))
        if wait_s > 0:
            seconds = math.ceil(wait_s)
            response = form.render(
                "forgot.html", 429, title="Forgot your password?", mail=True, email=email,
                sent=False, error="Too many requests for a new password. Try again in"
                f" {plural(seconds, 'second')}.")
            response.headers["retry-after"] = str(seconds)
            return response
        self._in_background(self._send_reset(mailer, email, self.apex(request)))
        return form.render("forgot.html", title="Check your email", mail=True, email=email,
                           sent=True)

    async def _send_reset(self, mailer: Mailer, email: str, apex: str) -> None:
        code = secrets.token_urlsafe(32)
        now = time.time()
        ttl_s = self.gateway.config.gateway.smtp.reset_ttl_s
        exists = await asyncio.to_thread(self.auth.store.add_reset, digest(code), email, now,
                                         now + ttl_s)
        log.info("password_reset_requested", extra={"user": email, "account": exists})
        if not exists:
            return
        minutes = max(1, round(ttl_s / 60))
        await mailer.send(email, f"Choose a new password for {self.auth.domain}", (
            f"Someone (we hope you) asked for a new password for {email} on"
            f" {self.auth.domain}.\n\nTo choose it, open this link within"
            f" {plural(minutes, 'minute')}:\n\n{apex}/-/reset/{code}\n\n"
            "If you did not ask, ignore this email: your password stays as it is.\n"))

    def _in_background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except MailError as exc:
                log.error("mail_failed", extra={"error": str(exc)})

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reset(self, request: Request) -> Response:
        form = await self.form(request)
        code = request.path_params["code"]
        auth = self.auth
        email = (await asyncio.to_thread(auth.store.reset_email, digest(code), time.time())
                 if len(code) <= 64 else None)
        title = "Choose a new password"
        if email is None:
            return form.render("reset.html", 404, title="Link not valid", email=None)
        if request.method == "GET":
            return form.render("reset.html", title=title, email=email)
        fields = await _read_form(request)
        if not form.accepts(fields):
            return form.render("reset.html", 403, title=title, email=email, error=_EXPIRED_FORM)
        password = fields.get("password", "")
        session_id = secrets.token_urlsafe(32)
        try:
            if password != fields.get("confirm", ""):
                raise AccountError("The two passwords are not the same.")
            password_hash = await auth._hash(auth.passwords.hash, password)
            await asyncio.to_thread(auth.store.use_reset, digest(code), password_hash,
                                    digest(session_id), time.time())
        except AccountError as exc:
            return form.render("reset.html", 400, title=title, email=email, error=str(exc))
        if form.principal is not None:  # this browser's session, maybe another account's
            await auth.sign_out(form.principal)
        log.info("password_reset_done", extra={"user": email})
        response = _redirect("/-/account?done=password")
        response.raw_headers.append(_session_cookie(auth, session_id))
        return response


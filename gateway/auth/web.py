"""The sign-in pages on the apex, and the two paths the gateway answers itself on tenant hosts.

Apex (Starlette routes, mounted by site.py):
    GET/POST /-/login           sign in; then back to `next` (checked by urls.safe_next)
    GET/POST /-/logout          sign out, everywhere
    GET/POST /-/invite/{code}   accept an invitation: choose a password, get an account

Tenant hosts (plain ASGI, called by app.py before proxying):
    /-/logout                   Datasette's own "Log out" button posts here: sign out
    /-/gateway-signin           the tenant's steps of a hand-off (service.py), and where a
                                "Sign in" link on a tenant may point: it brings the apex's
                                sign-in here, or goes to the sign-in page

Sign-in always lands (issue 13): a browser that comes back to a sign-in page it has left (Back,
a second tab, a reload) while signed in goes on where it was going, and a hand-off that cannot
finish leads to the sign-in page saying so, never to a dead end.

Every form carries a CSRF token (csrf.py); every page has html.SECURITY_HEADERS.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..asgi import Receive, Scope, Send
from ..errors import AccountError
from ..html import page, render
from .cookies import (
    CHECKED_COOKIE,
    SESSION_COOKIE,
    STATE_COOKIE,
    cookie_values,
    csrf_cookie_name,
    set_cookie,
)
from .service import SignInRefused, is_code
from .store import Principal, digest
from .urls import host_port, origin, path_of, safe_next, tenant_of

if TYPE_CHECKING:
    from .service import Auth

MAX_FORM_BYTES = 16 * 1024
TENANT_SIGNIN_PATH = "/-/gateway-signin"
STATE_TTL_S = 600
CHECKED_TTL_S = 60

TenantPage = Callable[[Scope, Receive, Send, str], Awaitable[None]]

log = logging.getLogger(__name__)


class _Form:
    """What one page request needs: the auth service, the CSRF cookie, the signed-in user."""

    def __init__(self, request: Request, auth: Auth, principal: Principal | None) -> None:
        self.request = request
        self.auth = auth
        self.principal = principal
        self.csrf_name = csrf_cookie_name(auth.tls)
        existing = request.cookies.get(self.csrf_name, "")
        self.csrf_cookie = existing or auth.csrf.new_cookie()
        self.csrf_is_new = not existing

    def accepts(self, fields: dict[str, str]) -> bool:
        own_origin = origin(self.request.url.scheme, self.auth.domain,
                            host_port(self.request.headers.get("host", "").encode()))
        return not self.csrf_is_new and self.auth.csrf.accepts(
            self.csrf_cookie, fields.get("csrf_token", ""), self.request.headers.get("origin"),
            own_origin,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("title", _TITLES.get(template, ""))  # pages elsewhere pass theirs
        response = page(render(template, site_name=self.auth.domain,
                               user=self.principal.email if self.principal else None,
                               csrf_token=self.auth.csrf.form_token(self.csrf_cookie),
                               password_min_length=self.auth.settings.password_min_length,
                               **context), status)
        if self.csrf_is_new:
            response.raw_headers.append(set_cookie(
                self.csrf_name, self.csrf_cookie, max_age_s=int(self.auth.settings.session_max_s),
                secure=self.auth.tls,
            ))
        return response


def auth_routes(auth: Auth) -> list[Route]:
    async def form_for(request: Request) -> _Form:
        principal = await auth.session_principal(_cookie_header(request), None)
        return _Form(request, auth, principal)

    def site_of(next_url: str) -> str | None:
        """The site `next_url` is on, to name on the page (a link may name any host: only
        sites that exist are named)."""
        tenant = tenant_of(next_url, auth.domain) if next_url else None
        return tenant if tenant in auth.config.tenants else None

    def login_page(form: _Form, status: int = 200, *, next_url: str, email: str = "",
                   error: str = "", notice: str = "") -> Response:
        tenant = site_of(next_url)
        return form.render("login.html", status, next=next_url, email=email, error=error,
                           notice=notice, tenant=tenant,
                           title=f"Sign in to see {tenant}" if tenant else "Sign in")

    async def login(request: Request) -> Response:
        form = await form_for(request)
        if request.method == "GET":
            query = request.query_params
            next_url = safe_next(query.get("next", ""), auth.domain) or ""
            reason = query.get("reason", "")
            if form.principal is not None and next_url and reason != "handoff":
                return await _continue(auth, form.principal.session_root, next_url,
                                       state=query.get("state", ""), pass_=query.get("pass", ""))
            tenant = site_of(next_url)
            if form.principal is None and query.get("silent") and tenant is not None:
                return _redirect(_tenant_signin(auth, tenant, next=path_of(next_url),
                                                anonymous="1"))
            return login_page(form, next_url=next_url, notice=_notice(
                query, tenant, signed_in=form.principal is not None))
        fields = await _read_form(request)
        next_url = safe_next(fields.get("next", ""), auth.domain) or ""
        if not form.accepts(fields):
            return login_page(form, 403, next_url=next_url, email=fields.get("email", ""),
                              error=_EXPIRED_FORM)
        try:
            session_id = await auth.sign_in(
                fields.get("email", ""), fields.get("password", ""),
                request.client.host if request.client else "",
                _session_cookies(request),
            )
        except SignInRefused as refused:
            response = login_page(form, refused.status, next_url=next_url,
                                  email=fields.get("email", ""), error=str(refused))
            if refused.retry_after_s:
                response.headers["retry-after"] = str(refused.retry_after_s)
            return response
        response = await _continue(auth, digest(session_id), next_url or "/")
        response.raw_headers.append(_session_cookie(auth, session_id))
        return response

    async def logout(request: Request) -> Response:
        form = await form_for(request)
        if request.method == "GET":
            return form.render("logout.html")
        if not form.accepts(await _read_form(request)):
            return form.render("logout.html", 403, error=_EXPIRED_FORM)
        if form.principal is not None:
            try:
                await auth.sign_out(form.principal)
            except AccountError as exc:  # a cluster's store that does not answer
                return form.render("logout.html", 503, error=str(exc))
        response = _redirect("/-/login?signed_out=1")
        response.raw_headers.append(_session_cookie(auth, ""))
        return response

    async def invite(request: Request) -> Response:
        form = await form_for(request)
        code = request.path_params["code"]
        invitation = await auth.invite(code)
        if invitation is None:
            return form.render("invite.html", 404, invitation=None)
        if request.method == "GET":
            return form.render("invite.html", invitation=invitation)
        fields = await _read_form(request)
        if not form.accepts(fields):
            return form.render("invite.html", 403, invitation=invitation, error=_EXPIRED_FORM)
        password = fields.get("password", "")
        if password != fields.get("confirm", ""):
            return form.render("invite.html", 400, invitation=invitation,
                               error="The two passwords are not the same.")
        try:
            session_id = await auth.accept_invite(code, password)
        except AccountError as exc:
            return form.render("invite.html", 400, invitation=invitation, error=str(exc))
        log.info("invite_accepted", extra={"user": invitation.email,
                                           "tenants": list(invitation.tenants)})
        first = invitation.tenants[0] if invitation.tenants else None
        target = auth.origin(first) + "/" if first else "/"
        response = await _continue(auth, digest(session_id), target)
        response.raw_headers.append(_session_cookie(auth, session_id))
        return response

    return [
        Route("/-/login", login, methods=["GET", "POST"]),
        Route("/-/logout", logout, methods=["GET", "POST"]),
        Route("/-/invite/{code}", invite, methods=["GET", "POST"]),
    ]


def tenant_pages(auth: Auth) -> dict[str, TenantPage]:
    """Paths the gateway answers itself on every tenant host, before the tenant sees them."""

    async def logout(scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        """Datasette's "Log out" (a same-origin POST) signs out at once; anything else goes to
        the apex's sign-out page, which asks first."""
        request = Request(scope, receive)
        port = host_port(request.headers.get("host", "").encode())
        own_origin = origin(request.url.scheme, f"{tenant}.{auth.domain}", port)
        if request.method != "POST" or request.headers.get("origin", "").lower() != own_origin:
            await _redirect(f"{auth.origin()}/-/logout")(scope, receive, send)
            return
        principal = await auth.session_principal(_cookie_header(request), tenant)
        if principal is not None:
            await auth.sign_out(principal)
        response = _redirect(f"{auth.origin()}/-/login?signed_out=1")
        response.raw_headers += [
            set_cookie(SESSION_COOKIE, "", max_age_s=0, secure=auth.tls),
            _session_cookie(auth, ""),
        ]
        await response(scope, receive, send)

    async def signin(scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        """Steps 3 and 5 of the hand-off (service.py), and the way in for a "Sign in" link."""
        request = Request(scope, receive)
        next_path = request.query_params.get("next", "/")
        if not next_path.startswith("/") or safe_next(next_path, auth.domain) is None:
            next_path = "/"
        response = await _hand_off(auth, tenant, request.query_params, _cookie_header(request),
                                   next_path)
        await response(scope, receive, send)

    return {"/-/logout": logout, TENANT_SIGNIN_PATH: signin}


async def _hand_off(auth: Auth, tenant: str, query: Mapping[str, str], cookie: bytes,
                    next_path: str) -> Response:
    states = [value for value in cookie_values(cookie, STATE_COOKIE.encode()) if is_code(value)]
    ticket = query.get("ticket", "")
    if ticket:
        session_id = await auth.redeem_ticket(ticket, tenant, states[0] if states else "")
        if session_id is not None:
            response = _redirect(next_path)
            response.raw_headers += [
                set_cookie(SESSION_COOKIE, session_id,
                           max_age_s=int(auth.settings.session_max_s), secure=auth.tls),
                set_cookie(STATE_COOKIE, "", max_age_s=0, secure=auth.tls),
            ]
            return response
    if await auth.session_principal(cookie, tenant) is not None:
        return _redirect(next_path)  # the host has a session: Back, a second tab, a real domain
    come_back = auth.origin(tenant) + next_path
    if ticket:
        log.info("hand_off_failed", extra={"tenant": tenant, "state_cookie": bool(states)})
        return _redirect(_apex_signin(auth, next=come_back, reason="handoff"))
    pass_ = query.get("pass", "")
    if pass_:
        state = states[0] if states else secrets.token_urlsafe(24)
        response = _redirect(_apex_signin(auth, next=come_back, state=state, **{"pass": pass_}))
        response.raw_headers.append(set_cookie(STATE_COOKIE, state, max_age_s=STATE_TTL_S,
                                               secure=auth.tls))
        return response
    if query.get("anonymous"):  # the apex found no session (silent check): do not ask again
        response = _onward(next_path)
        response.raw_headers.append(set_cookie(CHECKED_COOKIE, "1", max_age_s=CHECKED_TTL_S,
                                               secure=auth.tls))
        return response
    return _redirect(_apex_signin(auth, next=come_back))


_TITLES = {"login.html": "Sign in", "logout.html": "Sign out", "invite.html": "Invitation"}
_EXPIRED_FORM = "This form has expired (or was sent from another site). Please try again."


async def _continue(auth: Auth, session_root: str, next_url: str, *, state: str = "",
                    pass_: str = "") -> Response:
    """Send a signed-in browser on to `next_url`; to a tenant, through the hand-off (steps 2
    and 4 in service.py). Only the path of `next_url` is kept: the tenant's origin is the
    gateway's own (issue 12)."""
    tenant = tenant_of(next_url, auth.domain)
    if tenant is None:
        return _redirect(next_url)
    path = path_of(next_url)
    if is_code(state) and auth.accepts_pass(pass_, session_root, tenant):
        ticket = await auth.issue_ticket(session_root, tenant, state)
        return _redirect(_tenant_signin(auth, tenant, ticket=ticket, next=path))
    return _redirect(_tenant_signin(auth, tenant, next=path,
                                    **{"pass": auth.make_pass(session_root, tenant)}))


def _onward(path: str) -> Response:
    """A page that goes on to `path` at once, from this host: the request for `path` is then a
    same-origin navigation, which the silent check leaves alone even in a browser that keeps no
    cookies here (a redirect would bring it back to the check, again and again). A refresh of
    no delay replaces this page in the history, so Back does not come here."""
    url = html.escape(path, quote=True)
    body = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0; url={url}"><title>Opening the page</title>'
            f'</head><body><p><a href="{url}">Open the page</a></p></body></html>\n')
    return page(body.encode())


def _tenant_signin(auth: Auth, tenant: str, **query: str) -> str:
    return f"{auth.origin(tenant)}{TENANT_SIGNIN_PATH}?{urlencode(query)}"


def _apex_signin(auth: Auth, **query: str) -> str:
    return f"{auth.origin()}/-/login?{urlencode(query)}"


def _redirect(location: str) -> Response:
    response = page(b"", 303)
    response.headers["location"] = location
    return response


def _session_cookie(auth: Auth, session_id: str) -> tuple[bytes, bytes]:
    """The sign-in cookie, for the whole domain ("" deletes it)."""
    return set_cookie(SESSION_COOKIE, session_id,
                      max_age_s=int(auth.settings.session_max_s) if session_id else 0,
                      secure=auth.tls, domain=auth.domain)


def _session_cookies(request: Request) -> list[str]:
    return cookie_values(_cookie_header(request), SESSION_COOKIE.encode())


def _notice(query: Mapping[str, str], tenant: str | None, *, signed_in: bool) -> str:
    """What happened, said on the sign-in page."""
    if query.get("signed_out"):
        return "You have signed out."
    reason = query.get("reason")
    if reason == "ended" and not signed_in:
        return f"Your session has ended. Sign in again to see {tenant}." if tenant else (
            "Your session has ended. Sign in again.")
    if reason == "handoff" and tenant:
        if signed_in:
            return (f"Signing in to {tenant} did not finish: the sign-in link had expired or"
                    f" was used already, or your browser did not keep {tenant}'s cookies.")
        return (f"Signing in to {tenant} did not finish: the sign-in link had expired or was"
                " used already. Sign in again to go on.")
    return ""


def _cookie_header(request: Request) -> bytes:
    """Every Cookie header of the request, joined (a browser sends one; HTTP/2 may split it)."""
    return b";".join(value for name, value in request.scope["headers"] if name == b"cookie")


async def _read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body, at most MAX_FORM_BYTES (more, or another type: no fields)."""
    if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

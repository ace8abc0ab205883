"""The sign-in pages on the apex, and the two paths the gateway answers itself on tenant hosts.

Apex (Starlette routes, mounted by site.py):
    GET/POST /-/login           sign in; then back to `next` (checked by urls.safe_next)
    GET/POST /-/logout          sign out, everywhere
    GET/POST /-/invite/{code}   accept an invitation: choose a password, get an account

Tenant hosts (plain ASGI, called by app.py before proxying):
    /-/logout                   Datasette's own "Log out" button posts here: sign out
    /-/gateway-signin           the end of a hand-off (see service.py): redeem the ticket

Every form carries a CSRF token (csrf.py); every page has pages.SECURITY_HEADERS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..asgi import Receive, Scope, Send
from ..errors import AccountError, HandOffFailed
from ..pages import page, render
from .cookies import SESSION_COOKIE, STATE_COOKIE, cookie_values, csrf_cookie_name, set_cookie
from .service import SignInRefused
from .store import Principal, digest
from .urls import host_port, origin, path_of, safe_next, tenant_of

if TYPE_CHECKING:
    from ..runtime import Gateway
    from .service import Auth

MAX_FORM_BYTES = 16 * 1024
TENANT_SIGNIN_PATH = "/-/gateway-signin"

TenantPage = Callable[[Scope, Receive, Send, str], Awaitable[None]]


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
        response = page(render(template, site_name=self.auth.domain, title=_TITLES[template],
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


def auth_routes(gateway: Gateway) -> list[Route]:
    auth = gateway.auth

    async def form_for(request: Request) -> _Form:
        principal = await auth.session_principal(request.headers.get("cookie", "").encode(),
                                                 None)
        return _Form(request, auth, principal)

    async def login(request: Request) -> Response:
        form = await form_for(request)
        fields = await _read_form(request) if request.method == "POST" else {}
        source = fields if request.method == "POST" else dict(request.query_params)
        next_url = safe_next(source.get("next", ""), auth.domain) or ""
        state = source.get("state", "")
        if request.method == "GET":
            if form.principal is not None and next_url:
                return await _continue(auth, form.principal.session_root, next_url, state)
            return form.render("login.html", next=next_url, state=state, email="",
                               notice=_notice(request))
        if not form.accepts(fields):
            return form.render("login.html", 403, next=next_url, state=state,
                               email=fields.get("email", ""), error=_EXPIRED_FORM)
        try:
            session_id = await auth.sign_in(
                fields.get("email", ""), fields.get("password", ""),
                request.client.host if request.client else "",
                _session_cookies(request),
            )
        except SignInRefused as refused:
            response = form.render("login.html", refused.status, next=next_url, state=state,
                                   email=fields.get("email", ""), error=str(refused))
            if refused.retry_after_s:
                response.headers["retry-after"] = str(refused.retry_after_s)
            return response
        response = await _continue(auth, digest(session_id), next_url or "/", state)
        response.raw_headers.append(_session_cookie(auth, session_id))
        return response

    async def logout(request: Request) -> Response:
        form = await form_for(request)
        if request.method == "GET":
            return form.render("logout.html")
        if not form.accepts(await _read_form(request)):
            return form.render("logout.html", 403, error=_EXPIRED_FORM)
        if form.principal is not None:
            await auth.sign_out(form.principal)
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
        first = invitation.tenants[0] if invitation.tenants else None
        scheme, port = request.url.scheme, host_port(request.headers.get("host", "").encode())
        target = origin(scheme, f"{first}.{auth.domain}", port) + "/" if first else "/"
        response = _redirect(target)
        response.raw_headers.append(_session_cookie(auth, session_id))
        return response

    return [
        Route("/-/login", login, methods=["GET", "POST"]),
        Route("/-/logout", logout, methods=["GET", "POST"]),
        Route("/-/invite/{code}", invite, methods=["GET", "POST"]),
    ]


def tenant_pages(gateway: Gateway) -> dict[str, TenantPage]:
    """Paths the gateway answers itself on every tenant host, before the tenant sees them."""
    auth = gateway.auth

    async def logout(scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        """Datasette's "Log out" (a same-origin POST) signs out at once; anything else goes to
        the apex's sign-out page, which asks first."""
        request = Request(scope, receive)
        port = host_port(request.headers.get("host", "").encode())
        apex = origin(request.url.scheme, auth.domain, port)
        own_origin = origin(request.url.scheme, f"{tenant}.{auth.domain}", port)
        if request.method != "POST" or request.headers.get("origin", "").lower() != own_origin:
            await _redirect(f"{apex}/-/logout")(scope, receive, send)
            return
        principal = await auth.session_principal(request.headers.get("cookie", "").encode(),
                                                 tenant)
        if principal is not None:
            await auth.sign_out(principal)
        response = _redirect(f"{apex}/-/login?signed_out=1")
        response.raw_headers += [
            set_cookie(SESSION_COOKIE, "", max_age_s=0, secure=auth.tls),
            _session_cookie(auth, ""),
        ]
        await response(scope, receive, send)

    async def signin(scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        request = Request(scope, receive)
        next_path = request.query_params.get("next", "/")
        if not next_path.startswith("/") or safe_next(next_path, auth.domain) is None:
            next_path = "/"
        state = next(iter(cookie_values(request.headers.get("cookie", "").encode(),
                                        STATE_COOKIE.encode())), "")
        session_id = await auth.redeem_ticket(request.query_params.get("ticket", ""), tenant,
                                              state)
        if session_id is None:
            raise HandOffFailed(
                "This sign-in link has expired or was used already, or your browser did not"
                " keep this site's cookies. Reload the page you wanted to see to try again.",
                tenant=tenant,
            )
        response = _redirect(next_path)
        response.raw_headers += [
            set_cookie(SESSION_COOKIE, session_id, max_age_s=int(auth.settings.session_max_s),
                       secure=auth.tls),
            set_cookie(STATE_COOKIE, "", max_age_s=0, secure=auth.tls),
        ]
        await response(scope, receive, send)

    return {"/-/logout": logout, TENANT_SIGNIN_PATH: signin}


_TITLES = {"login.html": "Sign in", "logout.html": "Sign out", "invite.html": "Invitation"}
_EXPIRED_FORM = "This form has expired (or was sent from another site). Please try again."


async def _continue(auth: Auth, session_root: str, next_url: str, state: str) -> Response:
    """Send a signed-in browser on to `next_url`, through a hand-off when a tenant asked."""
    tenant = tenant_of(next_url, auth.domain)
    if tenant is None or not state:
        return _redirect(next_url)
    ticket = await auth.issue_ticket(session_root, tenant, state)
    parts = urlsplit(next_url)
    query = urlencode({"ticket": ticket, "next": path_of(next_url)})
    return _redirect(f"{parts.scheme}://{parts.netloc}{TENANT_SIGNIN_PATH}?{query}")


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
    return cookie_values(request.headers.get("cookie", "").encode(), SESSION_COOKIE.encode())


def _notice(request: Request) -> str:
    return "You have signed out." if request.query_params.get("signed_out") else ""


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

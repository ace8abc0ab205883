"""Teams: a tenant's owners manage who may see and change it, on the apex.

    GET  /-/team/{tenant}            the Team page: members and their roles, invitations
    POST /-/team/{tenant}/invite     invite someone by email (a new account gets a sign-up
                                     link; an existing one becomes a member at once)
    POST /-/team/{tenant}/role       make a member an owner, or an owner a member
    POST /-/team/{tenant}/remove     remove a member
    POST /-/team/{tenant}/cancel     cancel the invitations of an email address

On the apex rather than on the tenant's host: one origin holds every form and its CSRF cookie,
and a tenant's Datasette never sees these requests. Only the tenant's owners get the page; a
tenant always keeps an owner (the last one cannot be removed or made a member from here; the
operator can, with `gateway tenant members`).

Invitations are emailed when [smtp] is configured; otherwise, or when sending fails, the page
shows the link for the owner to pass on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AccountError
from ..mail import Mailer, MailError
from .passwords import normalise_email
from .store import Principal, digest
from .urls import host_port, origin
from .web import _EXPIRED_FORM, _Form, _read_form, _redirect

if TYPE_CHECKING:
    from ..runtime import Gateway
    from .service import Auth

log = logging.getLogger(__name__)

ROLES = ("member", "owner")
_DONE = {
    "role": "The role has been changed.",
    "removed": "The member has been removed.",
    "cancelled": "The invitation has been cancelled: its link no longer works.",
}


class _Owner(NamedTuple):
    form: _Form
    tenant: str
    principal: Principal


class TeamPages:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.auth: Auth = gateway.auth

    def routes(self) -> list[Route]:
        return [
            Route("/-/team/{tenant}", self.team),
            Route("/-/team/{tenant}/invite", self.invite, methods=["POST"]),
            Route("/-/team/{tenant}/role", self.role, methods=["POST"]),
            Route("/-/team/{tenant}/remove", self.remove, methods=["POST"]),
            Route("/-/team/{tenant}/cancel", self.cancel, methods=["POST"]),
        ]

    async def _owner(self, request: Request) -> _Owner | Response:
        """Who asks, or the answer instead of the page if the browser is not signed in as one
        of the tenant's owners."""
        cookie = request.headers.get("cookie", "").encode()
        form = _Form(request, self.auth, await self.auth.session_principal(cookie, None))
        tenant = request.path_params["tenant"]
        if tenant not in self.gateway.config.tenants:
            return form.render("team.html", 404, title="No such site", tenant=tenant,
                               refused=f"There is no site {tenant!r} here.")
        if form.principal is None:
            return _redirect(f"/-/login?next=/-/team/{tenant}")
        if tenant not in form.principal.owner_of:
            return form.render(
                "team.html", 403, title="Owners only", tenant=tenant,
                refused=f"Only the owners of {tenant!r} may manage its team. You are signed in"
                f" as {form.principal.email}.")
        return _Owner(form, tenant, form.principal)

    async def team(self, request: Request) -> Response:
        owner = await self._owner(request)
        if isinstance(owner, Response):
            return owner
        return await self._render(owner.form, owner.tenant, notice=_DONE.get(
            request.query_params.get("done", ""), ""))

    async def _render(self, form: _Form, tenant: str, status: int = 200,
                      **context: object) -> Response:
        store = self.auth.store
        members = await asyncio.to_thread(store.team, tenant)
        invites = await asyncio.to_thread(store.pending_invites, tenant, time.time())
        settings = self.gateway.config.tenants[tenant].settings
        context.setdefault("notice", "")
        return form.render("team.html", status, title=f"Team of {settings.title or tenant}",
                           tenant=tenant, members=members, invites=invites,
                           tenant_url=self._tenant_url(form.request, tenant),
                           mail=self.gateway.config.gateway.smtp.host != "", **context)

    async def _post(self, request: Request) -> tuple[_Owner, dict[str, str]] | Response:
        """A form sent by an owner, with a valid CSRF token; else the answer to give."""
        owner = await self._owner(request)
        if isinstance(owner, Response):
            return owner
        fields = await _read_form(request)
        if not owner.form.accepts(fields):
            return await self._render(owner.form, owner.tenant, 403, error=_EXPIRED_FORM)
        return owner, fields

    async def invite(self, request: Request) -> Response:
        sent = await self._post(request)
        if isinstance(sent, Response):
            return sent
        (form, tenant, principal), fields = sent
        try:
            email = normalise_email(fields.get("email", ""))
        except AccountError as exc:
            return await self._render(form, tenant, 400, error=str(exc),
                                      email=fields.get("email", ""))
        added = await self._add_existing(tenant, email)
        if added is not None:
            notice = added
            link = ""
        else:
            link = await self._new_invite(form.request, tenant, email)
            notice = f"Invitation made for {email}."
        log.info("invite_sent", extra={"tenant": tenant, "user": principal.email,
                                       "invitee": email, "account": added is not None})
        mailed = await self._mail(principal, tenant, email, link or
                                  self._tenant_url(form.request, tenant))
        if mailed:
            notice += " We have emailed them."
        return await self._render(form, tenant, notice=notice,
                                  link="" if mailed else link, link_for=email)

    async def _add_existing(self, tenant: str, email: str) -> str | None:
        """Add an existing account as a member (None if there is no account)."""
        if await asyncio.to_thread(self.auth.store.credentials, email) is None:
            return None
        added = await asyncio.to_thread(self.auth.store.add_member, tenant, email)
        return (f"{email} already has an account, and is now a member." if added
                else f"{email} is a member already.")

    async def _new_invite(self, request: Request, tenant: str, email: str) -> str:
        code = secrets.token_urlsafe(32)
        now = time.time()
        await asyncio.to_thread(self.auth.store.add_invite, digest(code), email, (tenant,), now,
                                now + self.auth.settings.invite_ttl_s)
        return f"{self._apex(request)}/-/invite/{code}"

    async def _mail(self, inviter: Principal, tenant: str, email: str, link: str) -> bool:
        """Email the invitation (or the news); False if there is no SMTP or it failed."""
        config = self.gateway.config
        mailer = Mailer.configured(config.gateway.smtp, config.domain)
        if mailer is None:
            return False
        title = config.tenants[tenant].settings.title or tenant
        days = max(1, round(self.auth.settings.invite_ttl_s / 86400))
        body = (f"{inviter.email} has invited you to {title} on {config.domain}.\n\n"
                + (f"Open this link within {days} day{'s' if days != 1 else ''} to create your"
                   f" account:\n\n{link}\n" if "/-/invite/" in link else
                   f"You can see it at {link} when you are signed in.\n"))
        try:
            await mailer.send(email, f"You are invited to {title}", body)
        except MailError as exc:
            log.error("mail_failed", extra={"error": str(exc)})
            return False
        return True

    async def role(self, request: Request) -> Response:
        def set_role(tenant: str, fields: dict[str, str]) -> None:
            role, email = fields.get("role", ""), fields.get("email", "")
            if role not in ROLES:
                raise AccountError(f"{role!r} is not a role: choose member or owner.")
            self.auth.store.set_role(tenant, email, role, keep_an_owner=True)
            log.info("member_role_changed", extra={"tenant": tenant, "member": email,
                                                   "role": role})
        return await self._change(request, "role", set_role)

    async def remove(self, request: Request) -> Response:
        def remove_member(tenant: str, fields: dict[str, str]) -> None:
            email = fields.get("email", "")
            self.auth.store.remove_member(tenant, email, keep_an_owner=True)
            log.info("member_removed", extra={"tenant": tenant, "member": email})
        return await self._change(request, "removed", remove_member)

    async def cancel(self, request: Request) -> Response:
        def cancel_invites(tenant: str, fields: dict[str, str]) -> None:
            email = fields.get("email", "")
            self.auth.store.cancel_invites(tenant, email)
            log.info("invite_cancelled", extra={"tenant": tenant, "invitee": email})
        return await self._change(request, "cancelled", cancel_invites)

    async def _change(self, request: Request, done: str,
                      change: Callable[[str, dict[str, str]], None]) -> Response:
        """An owner's change to a team: `change(tenant, fields)` runs in a thread (the store
        blocks); the AccountError it raises is shown on the page, else back to the page with
        the `done` notice."""
        sent = await self._post(request)
        if isinstance(sent, Response):
            return sent
        (form, tenant, _), fields = sent
        try:
            await asyncio.to_thread(change, tenant, fields)
        except AccountError as exc:
            return await self._render(form, tenant, 400, error=str(exc))
        return _redirect(f"/-/team/{tenant}?done={done}")

    def _apex(self, request: Request) -> str:
        return origin(request.url.scheme, self.auth.domain,
                      host_port(request.headers.get("host", "").encode()))

    def _tenant_url(self, request: Request, tenant: str) -> str:
        return origin(request.url.scheme, f"{tenant}.{self.auth.domain}",
                      host_port(request.headers.get("host", "").encode())) + "/"

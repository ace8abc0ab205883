"""The ASGI application: every request starts here and reads top to bottom.

    Host header --routing--> tenant --auth--> proxy --> the tenant's Datasette
                                   \\-> /-/logout, /-/gateway-signin (auth.web)
                                   \\-> /-/upload: CSV upload (upload/)
                          \\-> apex   --> site (the gateway's own pages, a Starlette app)
                          \\-> unknown --> 404 page

The tenant path is plain ASGI on purpose: Starlette's request machinery costs ~200 µs per
request (bench/proxy), which the gateway would take from Datasette on a shared CPU.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

from .asgi import ASGIApp, Message, Receive, ResponseAborted, Scope, Send, header, wants_json
from .auth.urls import host_port, origin
from .auth.web import tenant_pages
from .backends import TenantRoute
from .errors import BackendTimeout, BackendUnavailable, BadRequest, RequestError, UnknownHost
from .identity import NO_IDENTITY
from .pages import send_error
from .proxy import Outcome
from .routing import route_host
from .runtime import Gateway
from .site import build_site
from .upload.endpoint import PATHS as UPLOAD_PATHS
from .upload.endpoint import Uploads

log = logging.getLogger(__name__)


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.site: ASGIApp = build_site(gateway)
        self.tenant_pages = tenant_pages(gateway.auth)
        self.uploads = Uploads(
            settings=lambda: gateway.config.gateway.upload, authorize=self._may_upload,
            tenant_command=gateway.tenant_command, serve_database=gateway.restart_tenant,
        )
        self._request_ids = (f"{os.getpid():x}-{n:x}" for n in itertools.count(1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets here; uvicorn closes the connection
        start = time.perf_counter()
        request_id = next(self._request_ids)
        gateway = self.gateway
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        route = route_host(hosts[0] if hosts else None, gateway.domain)
        outcome = Outcome()
        if gateway.draining:
            send = _closing_connection(send)
        tenant = gateway.routes.get(route.tenant) if route.kind == "tenant" else None
        identity = NO_IDENTITY
        try:
            if len(hosts) > 1:  # which one names the site? RFC 9112 3.2: answer 400
                raise BadRequest("The request has more than one Host header.", tenant=None)
            if tenant is not None and scope["path"] in self.tenant_pages:
                await self.tenant_pages[scope["path"]](
                    scope, receive, _recording(send, outcome), tenant.name
                )
            elif tenant is not None and scope["path"] in UPLOAD_PATHS:
                await self.uploads(scope, receive, _recording(send, outcome), tenant, request_id)
            elif tenant is not None:
                identity = await gateway.auth.identity(scope, tenant.config)
                await gateway.proxy.forward(
                    scope, receive, send, tenant,
                    request_id=request_id.encode(), identity=identity, outcome=outcome,
                )
            elif route.kind == "apex":
                await self.site(scope, receive, _recording(send, outcome))
            else:
                raise UnknownHost(
                    f"There is no site at {route.host or 'this address'}.", tenant=None
                )
        except RequestError as error:
            if isinstance(error, BackendUnavailable | BackendTimeout):
                error = _for_the_public(error, tenant.name if tenant else "", request_id)
            outcome.status = error.status
            await send_error(
                _recording(send, outcome), error, request_id=request_id,
                as_json=wants_json(scope["path"], scope["headers"]),
                site_name=gateway.domain,
                apex_url=origin(scope["scheme"], gateway.domain,
                                host_port(header(scope["headers"], b"host"))),
            )
        except ResponseAborted:
            # The client went away or stalled, or the tenant broke off: uvicorn closes the
            # connection; the access log says 499 unless a status was sent.
            outcome.status = outcome.status or 499
        finally:
            gateway.request_metrics.record(route.tenant if tenant is not None else "",
                                           scope["method"], outcome.status, start,
                                           outcome.attempts)
            gateway.access_log.write(
                start=start,
                host=route.host,
                tenant=route.tenant if tenant is not None else "",
                method=scope["method"],
                path=scope["path"],
                status=outcome.status,
                bytes_sent=outcome.bytes_sent,
                attempts=outcome.attempts,
                request_id=request_id,
                user=identity.user,
            )

    async def _may_upload(self, scope: Scope, tenant: TenantRoute, *, owner: bool = False
                          ) -> str:
        """Uploads are for the tenant's members (the page sends others to sign in first).
        Deleting a table is for its owners (`owner`)."""
        member = await self.gateway.auth.member(scope, tenant.config,
                                                api=scope["method"] == "POST", owner=owner)
        return member.email


def _for_the_public(
    error: BackendUnavailable | BackendTimeout, tenant: str, request_id: str
) -> RequestError:
    """The page says what happened in words; why (a socket path, an errno) goes to the log."""
    log.warning("backend_unavailable", extra={
        "tenant": tenant, "status": error.status, "kind": type(error).__name__,
        "cause": str(error), "request_id": request_id})
    if isinstance(error, BackendTimeout):
        text = f"The site {tenant!r} took too long to answer. Try again in a moment."
    else:
        text = f"The site {tenant!r} could not be reached. Try again in a moment."
    return type(error)(text, tenant=tenant, headers=error.headers)


def _recording(send: Send, outcome: Outcome) -> Send:
    """Note the status and size of a response the gateway renders itself."""

    async def recording_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
        elif message["type"] == "http.response.body":
            outcome.bytes_sent += len(message.get("body", b""))
        await send(message)

    return recording_send


def _closing_connection(send: Send) -> Send:
    """While draining, every response asks the client to reconnect (to the new gateway)."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], (b"connection", b"close")]
        await send(message)

    return closing_send

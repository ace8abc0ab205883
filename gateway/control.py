"""The control socket: how `gateway reload|status|tenant restart|…` talk to a running gateway.

HTTP + JSON over a Unix socket in run_dir that only the gateway's user can open (mode 0600),
like Caddy's admin endpoint. The server side is a small Starlette app; the client is httpx.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import Config
from .errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from .certs import Certificates
    from .runtime import Gateway

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"

Handler = Callable[[Request], Awaitable[JSONResponse]]


def control_socket_path(config: Config) -> Path:
    return config.gateway.paths.run_dir / CONTROL_SOCKET


def bind_control_socket(path: Path) -> socket.socket:
    """A listening Unix socket that only this user (and root) can connect to.

    Bound under a temporary name and renamed over `path`, so that during an upgrade the path
    always leads to a worker: the old one's socket until the new one's replaces it.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # created 0600: no window in which others could connect
    try:
        sock.bind(str(temporary))
    finally:
        os.umask(old_umask)
    sock.listen(64)
    os.replace(temporary, path)
    return sock


def build_control_app(gateway: Gateway, extra: dict[str, Handler] | None = None) -> Starlette:
    def reports_errors(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> JSONResponse:
            try:
                return await handler(request)
            except ConfigError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except GatewayError as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)

        return wrapped

    async def status(request: Request) -> JSONResponse:
        answer = gateway.status()
        if gateway.cluster is not None:  # the whole cluster, as etcd has it
            from .cluster.operate import status_view

            answer["cluster"]["view"] = await status_view(gateway.cluster)
        return JSONResponse(answer)

    async def reload(request: Request) -> JSONResponse:
        try:
            report = await gateway.reload()
        except ConfigError as exc:
            log.error("reload_rejected", extra={"error": str(exc)})
            raise
        return JSONResponse(report.summary())

    async def restart(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if gateway.cluster is not None:  # on whichever host it is placed
            from .cluster.operate import restart_tenant

            host = await restart_tenant(gateway.cluster, name)
            return JSONResponse({"restarted": name, "host": host})
        await gateway.restart_tenant(name)
        return JSONResponse({"restarted": name})

    async def reload_cluster(request: Request) -> JSONResponse:
        if gateway.cluster is None:
            raise ConfigError("this gateway has no [cluster]: run `gateway reload`")
        from .cluster.operate import reload_cluster as reload_every_node

        return JSONResponse(await reload_every_node(gateway.cluster))

    async def certificate(request: Request) -> JSONResponse:
        if gateway.certificates is None:
            return JSONResponse(TLS_OFF_STATUS)
        return JSONResponse(gateway.certificates.status())

    async def renew_certificate(request: Request) -> JSONResponse:
        force = request.query_params.get("force") == "1"
        return JSONResponse(await _certificates(gateway).renew(force))

    routes = [
        Route("/status", reports_errors(status)),
        Route("/certificate", reports_errors(certificate)),
        Route("/certificate/renew", reports_errors(renew_certificate), methods=["POST"]),
        Route("/reload", reports_errors(reload), methods=["POST"]),
        Route("/cluster/reload", reports_errors(reload_cluster), methods=["POST"]),
        Route("/tenants/{name}/restart", reports_errors(restart), methods=["POST"]),
    ]
    for path, handler in (extra or {}).items():
        routes.append(Route(path, reports_errors(handler), methods=["GET", "POST"]))
    return Starlette(routes=routes)


TLS_OFF = 'tls.mode is "off": the gateway serves plain HTTP and has no certificate'
TLS_OFF_STATUS = {"mode": "off", "certificate": None, "next_renewal": None,
                  "renewal_basis": TLS_OFF}


def _certificates(gateway: Gateway) -> Certificates:
    if gateway.certificates is None:
        raise GatewayError(TLS_OFF)
    return gateway.certificates


def call(config: Config, method: str, path: str, timeout: float = 120.0, **kwargs: Any) -> Any:
    """Ask the running gateway; raise GatewayError with its message when it says no."""
    socket_path = control_socket_path(config)
    if not socket_path.exists():
        raise GatewayError(
            f"no gateway is running with {config.path} (no control socket at {socket_path})"
        )
    transport = httpx.HTTPTransport(uds=str(socket_path))
    try:
        with httpx.Client(transport=transport, base_url="http://gateway", timeout=timeout) as c:
            response = c.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise GatewayError(f"cannot reach the gateway at {socket_path}: {exc}") from None
    answer = response.json()
    if response.status_code >= 400:
        raise GatewayError(answer.get("error", response.text))
    return answer

"""`gateway health`: ask the running gateway's own HTTP listener for the apex's /-/health.

What Docker's HEALTHCHECK (and any load balancer) does: the answer proves that the process
accepts connections and its event loop answers, not merely that it exists. The request goes to
the loopback address of `listen.host` with the apex domain as Host: on `listen.http_port`, or
with TLS on (where plain HTTP only redirects) on `listen.https_port`, naming the domain in SNI.
The certificate is not checked: it is for the domain, and this is the gateway asking itself.
"""

from __future__ import annotations

from typing import Any

import httpx

from .config import Config
from .errors import GatewayError


def health_url(config: Config) -> str:
    listen = config.gateway.listen
    if listen.host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif listen.host == "::":
        host = "[::1]"
    elif ":" in listen.host:
        host = f"[{listen.host}]"
    else:
        host = listen.host
    if config.tls_enabled:
        return f"https://{host}:{listen.https_port}/-/health"
    return f"http://{host}:{listen.http_port}/-/health"


def check_health(config: Config, timeout_s: float = 5.0) -> dict[str, Any]:
    """The apex's /-/health answer; GatewayError unless it answered 200."""
    url = health_url(config)
    extensions = {"sni_hostname": config.domain} if config.tls_enabled else {}
    try:
        with httpx.Client(verify=False, timeout=timeout_s) as client:
            response = client.get(url, headers={"host": config.domain}, extensions=extensions)
    except httpx.HTTPError as exc:
        raise GatewayError(f"unhealthy: no answer from {url} ({exc})") from None
    if response.status_code != 200:
        raise GatewayError(f"unhealthy: {url} answered {response.status_code}")
    answer: dict[str, Any] = response.json()
    return answer

"""`gateway health`: what Docker's HEALTHCHECK runs against a real gateway."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
from collections.abc import Callable

from gateway.config import load_config
from gateway.health import health_url

from .conftest import BIN, RunningGateway, Site


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def health(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gateway"), "--config", str(site.config_path), "health",
                           *args], capture_output=True, text=True, timeout=60, check=False)


def test_health_of_a_running_gateway(
    site: Site, start_gateway: Callable[..., RunningGateway]
) -> None:
    """1. A gateway on a known port with one tenant. 2. `gateway health` says so (exit 0).
    3. --json prints the apex's /-/health answer."""
    site.write_config(listen={"http_port": free_port()})
    site.add_tenant("alice")
    gateway = start_gateway()
    gateway.wait_running("alice")
    result = health(site)
    assert (result.returncode, result.stdout) == (0, "healthy: 1 of 1 tenants running\n")
    assert json.loads(health(site, "--json").stdout) == {"ok": True,
                                                         "tenants": {"running": 1}}


def test_health_without_a_gateway(site: Site) -> None:
    port = free_port()
    site.write_config(listen={"http_port": port})
    result = health(site)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: unhealthy: no answer from http://127.0.0.1:{port}/-/health"
        " ([Errno 111] Connection refused)\n"
    )


def test_health_asks_https_when_tls_is_on(site: Site) -> None:
    """With TLS on, plain HTTP only redirects: the probe goes to the HTTPS port."""
    config = load_config(site.config_path)
    assert health_url(config) == "http://127.0.0.1:0/-/health"
    tls = dataclasses.replace(config.gateway.tls, mode="files")
    with_tls = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, tls=tls))
    assert health_url(with_tls) == "https://127.0.0.1:443/-/health"

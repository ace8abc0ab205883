"""What travels between an old and a new worker is checked like a config file (handover.py),
and a worker whose listener cannot serve says so instead of waiting for ever (server.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from typing import Any

import pytest

from gateway.config import TenantSettings, load_tenant
from gateway.errors import ConfigError
from gateway.handover import tenant_config_from_dict
from gateway.http_server import uvicorn_server
from gateway.server import _started

from .conftest import Site


def _sent(site: Site) -> dict[str, Any]:
    """A tenant's config as an old worker sends it (JSON)."""
    config = load_tenant(site.add_tenant("alice"), TenantSettings())
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))  # type: ignore[no-any-return]


def test_a_handed_over_config_is_rebuilt_exactly(site: Site) -> None:
    sent = _sent(site)
    assert tenant_config_from_dict(sent) == load_tenant(site.tenants_dir / "alice",
                                                        TenantSettings())


@pytest.mark.parametrize(("change", "error"), [
    ({"settings": {"retired_key": 1}}, "handover: tenant 'alice': retired_key: unknown key"
     " (known keys: datasette, idle_stop_s, memory_mb, open_files, processes, public,"
     " start_timeout_s, stop_timeout_s, title)"),
    ({"settings": {"memory_mb": "lots"}},
     "handover: tenant 'alice': memory_mb: expected an integer, got \"lots\""),
    ({"settings": {"memory_mb": 0}}, "handover: tenant 'alice': memory_mb: must be greater than 0"),
    ({"name": "Alice"}, "handover: tenant 'Alice': 'Alice' is not a valid tenant name: use 1 to"
     " 63 characters from a-z, 0-9 and '-'"),
])
def test_settings_this_code_does_not_accept_are_refused(
    site: Site, change: dict[str, Any], error: str
) -> None:
    """Settings from another version of the code: a key it dropped, a type or a value it no
    longer accepts. ConfigError (the new worker then re-reads that tenant from disk)."""
    sent = _sent(site)
    for key, value in change.items():
        sent[key] = {**sent[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as raised:
        tenant_config_from_dict(sent)
    assert str(raised.value) == error


def test_a_missing_field_is_refused(site: Site) -> None:
    sent = _sent(site)
    del sent["fingerprint"]
    with pytest.raises(ConfigError) as raised:
        tenant_config_from_dict(sent)
    assert str(raised.value) == "handover: tenant 'alice': 'fingerprint' is missing"


def test_waiting_for_a_listener_that_cannot_serve_ends_with_its_error() -> None:
    """uvicorn given a socket it cannot serve on: serve() fails, and the wait says why (it
    used to poll `started` for ever)."""

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
            server = uvicorn_server(object(), drain_s=1)
            serving = asyncio.ensure_future(server.serve(sockets=[datagram]))
            with pytest.raises(ValueError) as raised:
                await asyncio.wait_for(_started(server, serving), 10)
            assert str(raised.value).startswith("A Stream Socket was expected, got <socket")

    asyncio.run(main())

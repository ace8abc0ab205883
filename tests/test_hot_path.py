"""What the hot path was trimmed of (bench/proxy) still says and does the right thing."""

from __future__ import annotations

import asyncio
import io
import json

from gateway.logs import AccessLog

from .conftest import RunningGateway, Site, wait_until


async def test_access_log_line_is_the_json_of_its_fields() -> None:
    """1. Hostile strings (quotes, backslashes, controls, non-ASCII) are escaped as json.dumps
    would. 2. One line per request, `user` only when there is one."""
    stream = io.StringIO()
    access_log = AccessLog(stream=stream)
    hostile = 'é"\\\n\x00\u2028/\U0001f600 </script>'
    fields = {"host": hostile, "tenant": "alice", "method": "GET", "path": f"/{hostile}",
              "status": 200, "bytes_sent": 1655, "attempts": 2, "request_id": "1f-3"}
    access_log.write(start=0.0, **fields)  # type: ignore[arg-type]
    access_log.write(start=0.0, **{**fields, "user": hostile})  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the flush
    first, second = stream.getvalue().splitlines()
    entry = json.loads(first)
    assert list(entry) == ["time", "host", "tenant", "method", "path", "status", "bytes",
                           "duration_ms", "attempts", "request_id"]
    expected = {k.replace("bytes_sent", "bytes"): v for k, v in fields.items()}
    assert {k: entry[k] for k in expected} == expected
    assert isinstance(entry["duration_ms"], float)
    assert first.isascii() and json.dumps(entry) == first
    assert json.loads(second)["user"] == hostile


def test_responses_have_one_date_and_tenants_log_no_requests(
    site: Site, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    """1. A proxied response carries one Date (uvicorn's; the backend's is dropped).
    2. Datasette's own access log is off in tenants: requests add no tenant_output events."""
    site.add_tenant("alice")
    site.write_config(log={"level": "debug"})  # tenant output is logged at debug level
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice")
    response = gateway.get("alice", "/-/versions.json")
    assert response.status_code == 200
    assert len(response.headers.get_list("date")) == 1
    for _ in range(5):
        gateway.get("alice", "/data/items.json")
    wait_until(lambda: len([e for e in gateway.access if e.get("tenant") == "alice"]) >= 6)
    assert not [e for e in gateway.events
                if e.get("event") == "tenant_output" and "GET /" in e.get("line", "")]

"""/-/admin: every tenant at a glance, for admins (`gateway user admin`), server-rendered."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..pages import page, render
from .charts import sparkline
from .history import Sample

if TYPE_CHECKING:
    from ..runtime import Gateway

PATH = "/-/admin"


def dashboard_routes(gateway: Gateway) -> list[Route]:
    async def dashboard(request: Request) -> Response:
        cookie = request.headers.get("cookie", "").encode()
        user = await gateway.auth.session_principal(cookie, None)
        if user is None:
            return RedirectResponse(f"/-/login?next={PATH}", status_code=303)
        if not await asyncio.to_thread(gateway.auth.store.is_admin, user.email):
            body = render("admin.html", title="Dashboard", site_name=gateway.domain,
                          user=user.email, refused=True)
            return page(body, 403)
        query = request.query_params.get("q", "").strip().lower()
        return page(render("admin.html", title=f"Dashboard · {gateway.domain}",
                           site_name=gateway.domain, user=user.email, query=query,
                           **overview(gateway, query)))

    return [Route(PATH, dashboard)]


def overview(gateway: Gateway, query: str) -> dict[str, Any]:
    """Everything the page shows (`query`: only the tenants whose name contains it)."""
    now = gateway.history.current()
    rows = []
    states: dict[str, int] = {}
    for name, supervisor in sorted(gateway.supervisors.items()):
        states[supervisor.route.state] = states.get(supervisor.route.state, 0) + 1
        if query and query not in name:
            continue
        hour = gateway.history.last_hour(name, now.get(name))
        rows.append(_row(gateway, name, hour))
    return {
        "rows": rows, "total": len(gateway.supervisors), "states": sorted(states.items()),
        "isolation": gateway.isolation.describe(), "certificate": _certificate(gateway),
        "reloads": [{**r, "time": _ago(r["time"])} for r in gateway.events.reloads],
        "requests_counted": bool(gateway.config.gateway.metrics.listen),
    }


def _row(gateway: Gateway, name: str, hour: list[Sample | None]) -> dict[str, Any]:
    supervisor = gateway.supervisors[name]
    process = supervisor.current
    config = supervisor.config
    sizes = {}
    for file_name in config.databases:
        try:
            sizes[file_name] = (config.data_dir / file_name).stat().st_size
        except OSError:
            sizes[file_name] = 0
    latest = next((s for s in reversed(hour) if s is not None), None)
    failure = supervisor.last_failure
    upload = gateway.events.last_upload.get(name)
    return {
        "name": name, "state": supervisor.route.state,
        "uptime": _duration(time.time() - process.started_at) if process else "-",
        "restarts": supervisor.restarts,
        "rpm": sparkline([s.requests if s else None for s in hour], label="requests a minute"),
        "p95": sparkline([_ms(s.p95_s) if s else None for s in hour], label="p95", unit=" ms"),
        "memory": _bytes(latest.rss_bytes) if latest and latest.rss_bytes else "-",
        "databases": ", ".join(f"{n.rsplit('.', 1)[0]} {_bytes(b)}" for n, b in sizes.items())
        or "-",
        "last_upload": _ago(upload) if upload else "never",
        "last_error": (f"{_ago(failure['time'])}: {failure['reason']}" if failure else ""),
    }


def _certificate(gateway: Gateway) -> str:
    if gateway.certificates is None:
        return "none: tls.mode is off"
    certificate = gateway.certificates.status().get("certificate")
    if certificate is None:
        return "none yet"
    expiry = dt.datetime.fromisoformat(certificate["not_after"])
    days = (expiry.timestamp() - time.time()) / 86400
    return f"expires {expiry:%Y-%m-%d %H:%M} UTC (in {days:.0f} days)"


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return min(seconds, 60.0) * 1000  # beyond the last bucket: shown as a minute


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} B"


def _duration(seconds: float) -> str:
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if days >= 1:
        return f"{days:.1f} d"
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"


def _ago(when: float) -> str:
    return f"{_duration(max(time.time() - when, 0))} ago"

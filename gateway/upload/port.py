"""What the upload endpoint needs from the rest of the gateway, injected by app.py (issue 18):
who may upload, how to run a gateway module as the tenant, how to serve a new database. The
endpoint knows nothing of spawners, sandboxes or the runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from ..asgi import Scope
from ..config import TenantConfig

if TYPE_CHECKING:
    from ..backends import TenantRoute


class Authorize(Protocol):
    """Whether this request may upload to this tenant (`owner`: may also delete its tables):
    returns who (for the log), or raises a RequestError (401, 403, a redirect to sign in...)
    to answer instead."""

    def __call__(self, scope: Scope, route: TenantRoute, /, *, owner: bool = False
                 ) -> Awaitable[str]: ...


# `python -m <module> --data-dir <its data folder> <arguments>` as the tenant, isolated like its
# Datasette but with only its data folder mounted: the argv and environment to start.
TenantCommand = Callable[[TenantConfig, str, list[str]],
                         Awaitable[tuple[list[str], dict[str, str]]]]

# Make the tenant (by name) serve a database file it did not have when it started: a hot swap.
ServeDatabase = Callable[[str], Awaitable[None]]

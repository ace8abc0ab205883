"""The gateway's exceptions: raised in the core, rendered once.

    GatewayError                 anything the gateway reports to a person
    ├── ConfigError              gateway.toml or tenants/ is wrong (names file and key)
    ├── TenantNameError          a tenant name that cannot exist
    ├── AccountError             an account operation that cannot be done (no such user, ...)
    ├── CertificateError         a certificate could not be obtained, renewed or loaded
    └── RequestError             one HTTP request failed; carries the status to answer with
        ├── SignInRequired       303: a browser must sign in first (to the sign-in page)
        ├── Unauthorized         401: a script must sign in first, or its API token is invalid
        ├── NotAMember           403: signed in, but not a member of this private tenant
        │   └── MembersOnly      403: what only members (or owners) may do, on any tenant
        ├── UnknownHost          404: no tenant at this host
        ├── BackendUnavailable   502: could not reach the tenant's process
        ├── BackendTimeout       504: the tenant's process did not answer in time
        ├── TenantUnavailable    503: the tenant is not running (failed, stopped, starting)
        ├── TenantBusy           503: every slot of the tenant stayed taken (Retry-After)
        └── BadRequest           400: a request the gateway will not route (two Host headers)

app.py turns a RequestError into an HTML or JSON page; cli.py turns any GatewayError into a
click error. Nothing else prints or exits.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; the message is written for the person who reads it."""


class ConfigError(GatewayError):
    """gateway.toml or a tenant's settings are invalid."""


class TenantNameError(GatewayError):
    """A tenant name that is not allowed."""


class AccountError(GatewayError):
    """An account, membership, token or invitation operation that cannot be done."""


class CertificateError(GatewayError):
    """Obtaining, renewing or loading the TLS certificate failed; the message says why."""


class RequestError(GatewayError):
    status = 500
    title = "Gateway error"

    def __init__(
        self,
        message: str,
        *,
        tenant: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.headers = headers or []  # sent with the error page (Location, WWW-Authenticate)


class SignInRequired(RequestError):
    status = 303
    title = "Sign in required"


class Unauthorized(RequestError):
    status = 401
    title = "Sign in required"


class NotAMember(RequestError):
    status = 403
    title = "Private site"


class MembersOnly(NotAMember):
    title = "Members only"


class UnknownHost(RequestError):
    status = 404
    title = "No such site"


class BackendUnavailable(RequestError):
    status = 502
    title = "Bad gateway"


class BackendTimeout(RequestError):
    status = 504
    title = "Gateway timeout"


class TenantUnavailable(RequestError):
    status = 503
    title = "Service unavailable"


class TenantBusy(RequestError):
    status = 503
    title = "Service unavailable"


class BadRequest(RequestError):
    status = 400
    title = "Bad request"

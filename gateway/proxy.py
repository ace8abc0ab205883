"""One request to one tenant: rewrite headers, pick a backend, stream both ways, retry safely.

Retry semantics (README "Retries" compares them with Traefik's and Caddy's):
- A request is retried, with exponential backoff and the tenant's *current* backend looked up
  again each time, while the retry budget lasts, when the backend could not have acted on it:
  the connection could not be made (socket missing, refused, timed out), or an idempotent
  request (GET, HEAD, OPTIONS, PUT, DELETE) got no response byte at all.
- A request body is replayable only if it was buffered whole (up to replay_body_max_bytes)
  before the first attempt. A non-idempotent request (POST, PATCH) whose connection dies after
  it was sent is never replayed: it gets a 502, never a duplicate write.
- Nothing is retried once response headers have arrived.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .asgi import Receive, ResponseAborted, Scope, Send, parse_content_length
from .backend_client import ConnectFailed, Connection, NoResponse
from .backends import Backend, TenantRoute
from .config import ProxySettings
from .errors import BackendTimeout, BackendUnavailable, TenantBusy, TenantUnavailable
from .identity import (
    NO_IDENTITY,
    Identity,
    is_client_claim,
    sets_owned_cookie,
    tenant_cookie_header,
)

# RFC 9110 7.6.1: connection-specific headers, never forwarded. Expect is answered by our own
# server (uvicorn sends the 100 Continue), so the backend must not see it again.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection te trailer transfer-encoding upgrade"
    b" proxy-authorization proxy-authenticate expect".split()
)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Responses bigger than this are watched for the client going away, so that an abandoned
# export stops reading from the backend. Smaller ones are not worth a watcher task.
_WATCH_DISCONNECT_AFTER = 1024 * 1024
# A buffered response up to this size is sent in one piece, a larger one piece by piece.
_ONE_PIECE = 256 * 1024
# A tenant that kept every slot busy for queue_timeout_s is asked again this much later.
_RETRY_AFTER_S = b"5"


@dataclass(slots=True)
class Outcome:
    status: int = 0
    bytes_sent: int = 0
    attempts: int = 0


def upstream_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    scheme: str,
    request_id: bytes,
    identity: Identity = NO_IDENTITY,
) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """Headers for the backend, plus the request's Content-Length and whether it is chunked."""
    dropped = set(HOP_BY_HOP)
    content_length: int | None = None
    chunked = False
    host = b""
    cookies: list[bytes] = []
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"connection":  # headers it names are hop-by-hop too (RFC 9110 7.6.1)
            dropped.update(token.strip().lower() for token in value.split(b","))
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"content-length":
            content_length = parse_content_length(value)
        elif name == b"host":
            host = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"authorization" and identity.strip_authorization:
            continue
        else:
            kept.append((name, value))
    result = [(b"host", host)] if host else []
    result += [(n, v) for n, v in kept if n not in dropped and not is_client_claim(n)]
    cookie = tenant_cookie_header(cookies, identity)
    if cookie:
        result.append((b"cookie", cookie))
    result += [
        (b"x-forwarded-for", client_ip.encode()),
        (b"x-forwarded-proto", scheme.encode()),
        (b"x-forwarded-host", host),
        (b"x-request-id", request_id),
    ]
    if chunked:
        content_length = None
        result.append((b"transfer-encoding", b"chunked"))
    elif content_length is not None:
        result.append((b"content-length", b"%d" % content_length))
    return result, content_length, chunked


# uvicorn writes its own Date on every response: the backend's would make two (RFC 9110 6.6.1).
_NOT_RETURNED = HOP_BY_HOP | {b"date"}


def downstream_headers(
    headers: Iterable[tuple[bytes, bytes]], identity: Identity = NO_IDENTITY
) -> list[tuple[bytes, bytes]]:
    dropped = set(_NOT_RETURNED)
    dropped.update(name for name, _ in identity.extra_response_headers)
    for name, value in headers:
        if name == b"connection":
            dropped.update(token.strip().lower() for token in value.split(b","))
    result = [(n, v) for n, v in headers if n not in dropped and not sets_owned_cookie(n, v)]
    return result + identity.extra_response_headers if identity.extra_response_headers else result


def should_retry(error: BackendUnavailable, *, method: str, replayable: bool) -> bool:
    """May a failed attempt be tried again? (See the module docstring.)"""
    if isinstance(error, ConnectFailed):
        return True
    if isinstance(error, NoResponse):
        return replayable and method in IDEMPOTENT_METHODS
    return False


def backoff_s(attempt: int) -> float:
    """10 ms, 20 ms, 40 ms ... at most 500 ms between attempts."""
    return min(0.01 * 2.0 ** (attempt - 1), 0.5)


class Slot:
    """One of a tenant's `max_connections_per_tenant` slots, for one request: held only while
    the tenant works on it. Waiting for one ends after `queue_timeout_s` with a 503.
    (`streamed_body`: one of the half of the slots that requests streaming a body may take.)"""

    __slots__ = ("_limiter", "_route", "_timeout", "held")

    def __init__(self, route: TenantRoute, timeout: float, *, streamed_body: bool = False
                 ) -> None:
        self._route = route
        self._limiter = route.body_limiter if streamed_body else route.limiter
        self._timeout = timeout
        self.held = False

    async def take(self) -> None:
        limiter = self._limiter
        if limiter.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await limiter.acquire()
            except TimeoutError:
                raise TenantBusy(
                    f"The site {self._route.name!r} is busy; try again in a moment.",
                    tenant=self._route.name, headers=[(b"retry-after", _RETRY_AFTER_S)],
                ) from None
        else:
            await limiter.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._limiter.release()


class Proxy:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self._buffered = 0  # response bytes held in buffers now, over all requests

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: TenantRoute,
        *,
        request_id: bytes,
        identity: Identity = NO_IDENTITY,
        outcome: Outcome,
    ) -> None:
        """Answer one request from `route`'s tenant. Raises RequestError before the response
        starts (the caller renders the page) and ResponseAborted after. The tenant stays awake
        while it runs (a lease), and a sleeping one is woken."""
        with route.lease():
            await self._forward(scope, receive, send, route, request_id, identity, outcome)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, route: TenantRoute,
                       request_id: bytes, identity: Identity, outcome: Outcome) -> None:
        method: str = scope["method"]
        client = scope.get("client")
        headers, content_length, chunked = upstream_headers(
            scope["headers"],
            client_ip=client[0] if client else "",
            scheme=scope["scheme"],
            request_id=request_id,
            identity=identity,
        )
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        has_body = chunked or bool(content_length)
        body: bytes | None = b""  # None: not buffered, streamed from `receive` on the attempt
        if has_body:
            if not chunked and content_length is not None and (
                content_length <= self.settings.replay_body_max_bytes
            ):
                body = await _read_whole_body(receive)
            else:
                body = None
        body_slot = Slot(route, self.settings.queue_timeout_s, streamed_body=body is None)
        slot = Slot(route, self.settings.queue_timeout_s)
        try:
            if body is None:
                await body_slot.take()
            await slot.take()
            connection, backend, response_headers = await self._attempt_until_answered(
                route, method, target, headers, body, chunked, receive, outcome
            )
            body_slot.release()  # the body is in
            await self._relay_response(
                connection, backend, response_headers, send, identity, outcome, receive, slot
            )
        finally:
            slot.release()
            body_slot.release()

    async def _attempt_until_answered(
        self,
        route: TenantRoute,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        chunked: bool,
        receive: Receive,
        outcome: Outcome,
    ) -> tuple[Connection, Backend, list[tuple[bytes, bytes]]]:
        """Send the request until a response head arrives; see the module docstring."""
        settings = self.settings
        deadline = time.monotonic() + settings.retry_budget_s
        replayable = body is not None
        while True:
            backend = route.backend
            if backend is None:
                route.wake()  # if it sleeps: one start for every request that finds it so
                if (route.state in ("failed", "stopped") or route.wake_failed
                        or time.monotonic() >= deadline):
                    raise _unavailable(route)
                await route.wait_for_change(deadline - time.monotonic())
                continue
            outcome.attempts += 1
            backend.begin()
            try:
                connection = await backend.pool.acquire(reuse=method in IDEMPOTENT_METHODS)
                try:
                    connection.send_head(method, target, headers)
                    if body is None:
                        replayable = False
                        await _stream_body(receive, connection, chunked)
                    elif body:
                        await connection.send_body(body, chunked=False)
                    outcome.status, response_headers = await connection.read_head(
                        settings.response_timeout_s
                    )
                except BaseException:
                    connection.close()
                    raise
                return connection, backend, response_headers
            except BackendTimeout as exc:
                backend.end()
                exc.tenant = route.name
                raise
            except BackendUnavailable as exc:
                backend.end()
                remaining = deadline - time.monotonic()
                if not should_retry(exc, method=method, replayable=replayable) or remaining <= 0:
                    exc.tenant = route.name
                    raise
                # Sleep, but wake at once when the supervisor publishes a new backend.
                if route.backend is backend:
                    await route.wait_for_change(min(backoff_s(outcome.attempts), remaining))
            except BaseException:
                backend.end()
                raise

    async def _relay_response(
        self,
        connection: Connection,
        backend: Backend,
        raw_headers: list[tuple[bytes, bytes]],
        send: Send,
        identity: Identity,
        outcome: Outcome,
        receive: Receive,
        slot: Slot,
    ) -> None:
        """Send the response. One that fits the buffers is read whole first, and the slot and
        the backend connection are given back before the client gets a byte: a slow reader
        then costs buffered memory, bounded, not a slot. A larger one is streamed, and gives
        its slot back while each piece waits for the client."""
        headers = downstream_headers(raw_headers, identity)
        settings = self.settings
        room = min(settings.response_buffer_bytes,
                   settings.response_buffer_total_bytes - self._buffered)
        parts: list[bytes] = []
        size = 0
        done_with_backend = False
        try:
            while True:
                chunk = await connection.read_body()
                if not chunk:
                    complete = True
                    break
                parts.append(chunk)
                size += len(chunk)
                self._buffered += len(chunk)
                if size > room and not connection.body_complete:
                    complete = False
                    break
            start = {"type": "http.response.start", "status": outcome.status, "headers": headers}
            if complete:
                done_with_backend = True
                backend.pool.release(connection)
                backend.end()
                slot.release()
                await send(start)
                if size <= _ONE_PIECE:
                    body = parts[0] if len(parts) == 1 else b"".join(parts)
                    outcome.bytes_sent = size
                    await send({"type": "http.response.body", "body": body})
                    return
                # Piece by piece: uvicorn waits for the client between pieces, so what the
                # client has not taken stays here, counted, not in the socket's buffer.
                for part in parts:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    outcome.bytes_sent += len(part)
                    size -= len(part)
                    self._buffered -= len(part)
                await send({"type": "http.response.body", "body": b""})
                return
            slot.release()  # while the client takes what is buffered
            await send(start)
            for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
                outcome.bytes_sent += len(part)
            self._buffered -= size
            parts, size = [], 0
            await _stream_rest(connection, send, outcome, receive, slot)
        finally:
            self._buffered -= size
            if not done_with_backend:
                backend.pool.release(connection)  # closes it unless the response was complete
                backend.end()


async def _read_whole_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ResponseAborted("the client went away while sending its request")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _stream_body(receive: Receive, connection: Connection, chunked: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ResponseAborted("the client went away while sending its request")
        data = message.get("body", b"")
        if data:
            await connection.send_body(data, chunked=chunked)
        if not message.get("more_body", False):
            connection.end_body(chunked=chunked)
            return


async def _stream_rest(
    connection: Connection, send: Send, outcome: Outcome, receive: Receive, slot: Slot
) -> None:
    """Stream what is left of a response too large to buffer. The slot is given back while
    each piece waits for the client, and taken again (queueing like any request) to read the
    next: a client that does not read holds no slot (limits.send_timeout_s then ends it)."""
    watcher: asyncio.Task[None] | None = None
    try:
        await slot.take()
        while chunk := await connection.read_body():
            slot.release()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            outcome.bytes_sent += len(chunk)
            await slot.take()
            if watcher is None and outcome.bytes_sent > _WATCH_DISCONNECT_AFTER:
                watcher = asyncio.ensure_future(_close_on_disconnect(receive, connection))
    except (BackendUnavailable, TenantBusy) as exc:
        raise ResponseAborted(str(exc)) from None
    finally:
        if watcher is not None:
            watcher.cancel()
    await send({"type": "http.response.body", "body": b""})


async def _close_on_disconnect(receive: Receive, connection: Connection) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    connection.close()


def _unavailable(route: TenantRoute) -> TenantUnavailable:
    if route.state == "failed" or route.wake_failed:
        message = f"The site {route.name!r} has stopped working and is being looked at."
    elif route.state == "stopped":
        message = f"The site {route.name!r} is stopped."
    else:
        message = f"The site {route.name!r} is starting; try again in a moment."
    return TenantUnavailable(message, tenant=route.name)

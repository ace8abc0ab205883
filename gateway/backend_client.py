"""The hot path's HTTP/1.1 client: keep-alive connections to one backend address.

Chosen by measurement (bench/proxy, and the closing note of the edge issue): a trivial upstream
behind uvicorn answered 25k req/s through this client, 8.5k through aiohttp's and under 1.6k
through httpx's; the gateway shares two cores with Datasette, so its CPU per request is what
matters. It is small because it only talks to backends we run: httptools parses responses,
asyncio transports carry bytes, and flow control is kept both ways so that neither a slow client
nor a huge export makes the gateway buffer a whole body.

A backend is an address: "unix:/run/gateway/alice.3/ds.sock" today, "tcp:10.0.0.7:8001" when
tenants move to other machines. Errors are mapped once, here:

    BackendUnavailable (errors.py)
    ├── ConnectFailed    nothing was sent: the socket is missing, refused or timed out
    ├── NoResponse       the request was (maybe) sent, but not one response byte came back
    └── ResponseBroken   the response started and then the connection died
    BackendTimeout       no response head within the response timeout
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import typing
from dataclasses import dataclass

import httptools

from .errors import BackendTimeout, BackendUnavailable

# Reading from a backend pauses when this much response body waits for a slow client: per
# streaming connection, what a client that never reads costs the gateway (bench/abuse.py).
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024
# Idle connections older than this are closed rather than reused: uvicorn (Datasette's server)
# closes keep-alive connections after 5 s, and reusing one just as it closes loses the request.
_IDLE_REUSE_S = 2.0


class ConnectFailed(BackendUnavailable):
    """Could not connect; the backend cannot have seen anything."""


class NoResponse(BackendUnavailable):
    """The connection ended before any byte of a response arrived."""


class ResponseBroken(BackendUnavailable):
    """The connection ended in the middle of a response."""


@dataclass(frozen=True, slots=True)
class BackendAddress:
    """Where a backend listens: a Unix socket path, or a TCP host and port."""

    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, address: str) -> BackendAddress:
        scheme, _, rest = address.partition(":")
        if scheme == "unix" and rest:
            return cls(path=rest)
        if scheme == "tcp":
            host, _, port = rest.rpartition(":")
            if host and port.isdigit():
                return cls(host=host.strip("[]"), port=int(port))
        raise ValueError(f"not a backend address: {address!r} (use unix:PATH or tcp:HOST:PORT)")

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"tcp:{self.host}:{self.port}"


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a backend, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._head: asyncio.Future[None] | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._keep_alive = False
        self._received_any = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._complete = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._lost: BaseException | None = None

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes nobody asked for: the connection is not reusable
            self._lose(ResponseBroken("the backend sent data outside a response"))
            return
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lose(ResponseBroken(f"malformed response from the backend: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc or ConnectionResetError("closed by the backend"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._drain_waiter)

    # httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_only:  # a response to HEAD has no body, whatever its Content-Length says
            self._complete = True
        _wake(self._head)

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        _wake(self._body_waiter)

    def on_message_complete(self) -> None:
        self._complete = True
        _wake(self._body_waiter)

    # used by the proxy -------------------------------------------------------------------------

    def send_head(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the request line and headers, and get ready for the response."""
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == "HEAD"
        self._head = self.loop.create_future()
        self._status, self._headers, self._keep_alive = 0, [], False
        self._received_any = self._complete = False
        lines = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        self._write(b"".join(lines))

    async def send_body(self, data: bytes, *, chunked: bool) -> None:
        if chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self._write(data)
        if self._writing_paused:
            await self._drain()

    def end_body(self, *, chunked: bool) -> None:
        if chunked:
            self._write(b"0\r\n\r\n")

    async def read_head(self, timeout: float) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Wait for the status and headers; raise NoResponse, ResponseBroken or BackendTimeout."""
        assert self._head is not None
        if not self._head.done():
            timer = self.loop.call_later(timeout, self._time_out, self._head)
            try:
                await self._head
            finally:
                timer.cancel()
        self._head.result()
        return self._status, self._headers

    async def read_body(self) -> bytes:
        """The next piece of the response body; b"" once it is complete."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _LOW_WATER and self.transport:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return b""
            if self._lost is not None:
                raise self._failure()
            self._body_waiter = self.loop.create_future()
            await self._body_waiter
            self._body_waiter = None

    @property
    def body_complete(self) -> bool:
        """Whether the whole response body has arrived (it may still be waiting in read_body)."""
        return self._complete

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and self._lost is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # internals -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._lost is not None or self.transport is None or self.transport.is_closing():
            raise self._failure()
        self.transport.write(data)

    async def _drain(self) -> None:
        while self._writing_paused:
            if self._lost is not None:
                raise self._failure()
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def _failure(self) -> BackendUnavailable:
        if self._received_any:
            return ResponseBroken(f"the backend closed the connection mid-response: {self._lost}")
        return NoResponse(f"the backend closed the connection: {self._lost}")

    def _lose(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self.transport is not None:
            self.transport.close()
        if self._head is not None and not self._head.done():
            self._head.set_exception(self._failure())
        _wake(self._body_waiter)
        _wake(self._drain_waiter)

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(BackendTimeout("the backend did not answer in time"))
        self.close()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class ConnectionPool:
    """Idle keep-alive connections to one backend, most recently used first."""

    def __init__(self, address: BackendAddress, connect_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.tls = tls  # TCP to another machine's host (gateway/cluster): mutual TLS
        self._idle: collections.deque[Connection] = collections.deque()
        self._closed = False

    async def acquire(self, *, reuse: bool = True) -> Connection:
        """A connection ready for one request: an idle one when `reuse`, else a new one."""
        if reuse:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable and now - connection.idle_since < _IDLE_REUSE_S:
                    return connection
                connection.close()
        return await self._connect()

    def release(self, connection: Connection) -> None:
        if self._closed or not connection.reusable:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def close(self) -> None:
        """Close idle connections now; connections in use close when they are released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.address.path:
                    _, protocol = await loop.create_unix_connection(
                        lambda: Connection(loop), self.address.path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: Connection(loop), self.address.host, self.address.port,
                        ssl=self.tls,
                    )
        except TimeoutError:
            raise ConnectFailed(f"connecting to {self.address} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.address}: {exc.strerror}") from None
        return protocol

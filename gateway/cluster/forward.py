"""A host's door for one tenant: a TCP port with mutual TLS, forwarding to its Unix socket.

Edges speak HTTP/1.1 to it exactly as they would to the socket; the bytes are copied both ways
unchanged (so responses stream, and flow control holds end to end). Each new connection goes to
the tenant's current process, so a hot swap on the host is a swap for the edges too. Tenants
still listen only on Unix sockets inside their host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from ..backends import TenantRoute

_CHUNK = 64 * 1024


class TenantDoor:
    def __init__(self, route: TenantRoute, host: str, tls: ssl.SSLContext) -> None:
        self.route = route
        self.host = host
        self.tls = tls
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self, timeout_s: float) -> None:
        """Take no new connection; let the open ones end (an edge closes them once it routes
        elsewhere) for up to `timeout_s`, then stop."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._connections:
                    await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            backend = self.route.backend
            if backend is None:
                return  # the edge sees a refused request (nothing sent) and retries
            try:
                socket_reader, socket_writer = await asyncio.open_unix_connection(
                    backend.address.path)
            except OSError:
                return
            # HTTP needs no half-closed connections: when either side ends, both are closed.
            copies = {asyncio.ensure_future(_copy(reader, socket_writer)),
                      asyncio.ensure_future(_copy(socket_reader, writer))}
            try:
                await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for copy in copies:
                    copy.cancel()
                socket_writer.close()
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()

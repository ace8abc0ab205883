"""What one client connection may cost: uvicorn's HTTP/1.1 protocol with the edge's limits.

uvicorn with httptools has no limit on a request head and no deadline for one, and a client
that stops reading holds its response (and whatever waits on it) forever (notes/edge.md). This
subclass adds, per connection ([limits] in gateway.toml):

    head_timeout_s       the whole request head must arrive in time (slowloris, idle sockets)
    keepalive_timeout_s  idle between requests (uvicorn's own timer)
    body_timeout_s       longest pause while a request body arrives; then 408 and close
    send_timeout_s       longest a client may accept nothing of a waiting response; then abort
    max_head_bytes       a bigger head gets 431 before it is read whole

Deadlines are checked by one timer per connection, every quarter of the shortest timeout, so
the hot path pays no timer per request: it only counts the bytes of heads (data_received) and
notes when a head starts and ends. A WebSocket upgrade gets a plain 400 (the gateway proxies
HTTP only); a malformed request a plain 400; each is one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import LimitsSettings

log = logging.getLogger(__name__)

_SEND_PROGRESS_BYTES = 64 * 1024
_WEBSOCKET_REFUSED = "This site does not accept WebSocket connections."


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a connection already answered."""


class LimitedHttpProtocol(HttpToolsProtocol):
    limits: LimitsSettings = LimitsSettings()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.limits
        self._tick_s = max(0.05, min(limits.head_timeout_s, limits.body_timeout_s,
                                     limits.send_timeout_s) / 4)
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._in_head = True  # between requests, or reading a request head
        self._head_bytes = 0  # bytes received since the last head ended (an upper bound)
        self._head_started: float | None = None  # when the current head began; None: not in one
        self._last_received = 0.0
        self._send_progress_at = 0.0
        self._send_buffered = math.inf

    # connection -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        now = self.loop.time()
        self._head_started = self._last_received = self._send_progress_at = now
        self._watchdog = self.loop.call_later(self._tick_s, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # answered and closing: nothing more is read
            return
        self._unset_keepalive_if_required()
        self._last_received = self.loop.time()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # not a WebSocket (refused in on_headers_complete): answered as plain HTTP
        except httptools.HttpParserError as exc:
            if not self.transport.is_closing():
                self._refuse(400, "Invalid HTTP request received.", f"malformed: {exc}")
            return
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._refuse(431, "Request header fields too large.", "head_too_large")

    # parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_started is None:
            self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        # _head_bytes may count body bytes that came in the same read: only when it is over
        # the limit is the head measured exactly (this keeps the common case free).
        if self._head_bytes > self.limits.max_head_bytes and self._head_size() > (
            self.limits.max_head_bytes
        ):
            self._refuse(431, "Request header fields too large.", "head_too_large")
            raise _Stop
        self._in_head = False
        self._head_bytes = 0
        self._head_started = None
        if self.parser.should_upgrade() and self._is_websocket():
            self._refuse(400, _WEBSOCKET_REFUSED, "websocket")
            raise _Stop
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    # limits ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """The connection's deadlines, checked every tick while it is open."""
        self._watchdog = None
        if self._closed:
            return
        now = self.loop.time()
        if self.transport.is_closing():  # closing flushes first: a stalled client must not
            if self._send_stalled(now):  # keep what waits for it (keep-alive close, errors)
                return
            self._watchdog = self.loop.call_later(self._tick_s, self._watch)
            return
        limits = self.limits
        cycle = self.cycle
        if self._head_started is not None and now - self._head_started > limits.head_timeout_s:
            if self._head_bytes:
                self._refuse(408, "The request head did not arrive in time.", "head_timeout")
            else:
                self._close("idle")
            return
        waiting_for_body = cycle is not None and cycle.more_body and not cycle.response_complete
        if not waiting_for_body or self.flow.read_paused:  # paused: the gateway is not reading
            self._last_received = now
        elif now - self._last_received > limits.body_timeout_s:
            if cycle is not None and not cycle.response_started:
                self._refuse(408, "The request body did not arrive in time.", "body_timeout")
            else:
                self._close("body_timeout")
            return
        if self._send_stalled(now):
            return
        self._watchdog = self.loop.call_later(self._tick_s, self._watch)

    def _send_stalled(self, now: float) -> bool:
        """Abort (True) when the client took no part of a waiting response for send_timeout_s.
        Progress is 64 KiB taken (or half of what is left): a TCP zero-window probe takes a
        byte now and then, and must not keep a stalled reader alive."""
        buffered = self.transport.get_write_buffer_size()
        if not buffered:
            self._send_progress_at, self._send_buffered = now, math.inf
        elif buffered <= self._send_buffered - min(_SEND_PROGRESS_BYTES, self._send_buffered / 2):
            self._send_progress_at, self._send_buffered = now, buffered
        elif now - self._send_progress_at > self.limits.send_timeout_s:
            log.info("client_timeout", extra={"reason": "send_timeout",
                                              "client": _client(self.client)})
            self.transport.abort()  # what waits in the buffer is dropped, not flushed
            return True
        return False

    def _refuse(self, status: int, text: str, reason: str) -> None:
        """Answer `status` with plain `text` (unless a response is under way), then close."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = text.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS[status], len(body), body)
            )
        self._close(reason, status)

    def _close(self, reason: str, status: int = 0) -> None:
        log.info("client_refused" if status else "client_timeout", extra={
            "reason": reason, "status": status, "client": _client(self.client)})
        self.transport.close()  # the watchdog stays, for a client that does not take the answer

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _is_websocket(self) -> bool:
        return any(name == b"upgrade" and b"websocket" in value.lower()
                   for name, value in self.headers)


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _client(client: tuple[str, int] | None) -> str:
    return client[0] if client else ""


def protocol_class(limits: LimitsSettings) -> type[LimitedHttpProtocol]:
    """The protocol class for uvicorn's `http=`, with `limits` applied."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})

"""The ASGI vocabulary every part of the gateway speaks: types, one exception, header helpers.

Imports nothing of ours, so any module may use it without pulling in the proxy or auth.

Header rules, the same everywhere (ASGI gives header names lower-cased, values as sent):
- `header()` returns the FIRST value of a name, as Starlette's `Headers.get` does. Where two
  values would be dangerous the caller refuses the request instead of picking one (two Host
  headers: 400, RFC 9112 3.2); llhttp already refuses two different Content-Lengths.
- Cookie headers are the exception: a client may send several, and they are one list
  (RFC 9113 8.2.3 splits them; `joined_header` puts them back together).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]


class ASGIApp(Protocol):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class ResponseAborted(Exception):
    """The exchange could not be finished (the client went away or stalled, or the backend broke
    off after the response had started); uvicorn closes the connection."""


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None when there is none."""
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


def header_count(headers: Headers, name: bytes) -> int:
    return sum(1 for key, _ in headers if key == name)


def joined_header(headers: Headers, name: bytes, separator: bytes) -> bytes | None:
    """Every value of header `name` joined by `separator` (Cookie: b"; "), or None."""
    values = [bytes(value) for key, value in headers if key == name]
    return separator.join(values) if values else None


def parse_content_length(value: bytes | None) -> int | None:
    """A Content-Length value as a number; None when absent or not `1*DIGIT` (RFC 9110 8.6)."""
    if value is None or not value.isdigit():  # bytes.isdigit: ASCII digits only, no sign
        return None
    return int(value)


def content_length(headers: Headers) -> int | None:
    return parse_content_length(header(headers, b"content-length"))


def wants_json(path: str, headers: Headers) -> bool:
    """Datasette's convention (a .json path) or an Accept header that asks for JSON, not HTML."""
    if path.endswith(".json"):
        return True
    accept = header(headers, b"accept")
    return accept is not None and b"application/json" in accept and b"text/html" not in accept

"""An upload request as it arrives: multipart/form-data parsed into parts and their bytes,
and the request headers an upload checks (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..asgi import Scope, header
from .errors import BadUpload, Forbidden


@dataclass(slots=True)
class Part:
    name: str
    filename: str | None


@dataclass(slots=True)
class FormParser:
    """Request body chunks -> events: ("part", Part), ("data", bytes), ("end", None) per part."""

    boundary: bytes
    events: list[tuple[str, Any]] = field(default_factory=list)
    finished: bool = False
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""
    _parser: MultipartParser | None = None

    def __post_init__(self) -> None:
        self._parser = MultipartParser(self.boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._add_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_value(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(
                ("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(("end", None)),
            "on_end": self._on_end,
        })

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        assert self._parser is not None
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadUpload(f"The request body is not valid multipart/form-data ({exc}).") from None
        events, self.events = self.events, []
        return events

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _add_name(self, data: bytes) -> None:
        self._header_name += data

    def _add_value(self, data: bytes) -> None:
        self._header_value += data

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.events.append(("part", Part(
            name, None if filename is None else filename.decode("utf-8", "replace"))))

    def _on_end(self) -> None:
        self.finished = True


def multipart_boundary(headers: list[tuple[bytes, bytes]]) -> bytes:
    content_type = header(headers, b"content-type") or b""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadUpload("Send the file as multipart/form-data, in a field named 'file' (curl:"
                        " -F file=@data.csv).")
    return boundary


def check_same_origin(scope: Scope) -> None:
    """Browsers say where a request comes from; refuse other origins (cross-site request
    forgery: another site's page posting a file with the member's cookies). curl says nothing."""
    headers = scope["headers"]
    site = header(headers, b"sec-fetch-site")
    if site and site not in (b"same-origin", b"none"):
        raise Forbidden("Uploads are accepted only from this site's own upload page.")
    origin = header(headers, b"origin")
    if origin and origin != f"{scope['scheme']}://".encode() + (header(headers, b"host") or b""):
        raise Forbidden("Uploads are accepted only from this site's own upload page.")

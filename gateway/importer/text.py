"""What kind of file, and which encoding: bytes -> text -> lines, chunk by chunk (pure)."""

from __future__ import annotations

import codecs
import io
import itertools
from collections.abc import Iterable, Iterator

from .errors import ImportFailed

# Names accepted for an explicit encoding, and the decoder each one means.
ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8",
    "utf-16": "utf-16", "utf16": "utf-16",
    "windows-1252": "windows-1252", "cp1252": "windows-1252",
    "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1",
}
MAX_LINE_CHARS = 16 * 1024 * 1024  # a longer line is not CSV text (and would fill memory)

_NOT_CSV = [
    (b"\x1f\x8b", "This is a gzip-compressed file, not a CSV file. Decompress it and upload the"
                  " .csv file inside."),
    (b"PK\x03\x04", "This looks like an Excel workbook (.xlsx) or a ZIP archive, not a CSV file."
                    " In your spreadsheet, save or download the sheet as CSV, then upload that."),
    (b"\xd0\xcf\x11\xe0", "This looks like an old Excel workbook (.xls), not a CSV file. In your"
                          " spreadsheet, save the sheet as CSV, then upload that."),
    (b"%PDF", "This is a PDF document, not a CSV file."),
    (b"SQLite format 3\x00", "This is an SQLite database, not a CSV file."),
    (b"\x00\x00\xfe\xff", "This file is UTF-32, which is not supported: save it as CSV UTF-8."),
    (b"\xff\xfe\x00\x00", "This file is UTF-32, which is not supported: save it as CSV UTF-8."),
]


def refuse_non_csv(head: bytes) -> None:
    """Raise ImportFailed for files that are recognisably something else than CSV text."""
    for magic, message in _NOT_CSV:
        if head.startswith(magic):
            raise ImportFailed(message, line=1)


def detect_encoding(head: bytes) -> str:
    """One of "utf-8", "utf-16-le", "utf-16-be", "windows-1252" (see Decoder), from the start.

    A byte-order mark decides. Without one, NUL bytes in every other position mean UTF-16.
    Otherwise it is UTF-8 unless the first non-ASCII bytes are not UTF-8, then Windows-1252. When
    the start is all ASCII, Decoder applies the same rule where the first non-ASCII byte comes.
    """
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8"
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le"
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be"
    sample = head[:4096]
    even, odd = sample[0::2], sample[1::2]
    if len(sample) >= 4:
        if odd.count(0) > len(odd) * 0.3 and even.count(0) < len(even) * 0.05:
            return "utf-16-le"
        if even.count(0) > len(even) * 0.3 and odd.count(0) < len(odd) * 0.05:
            return "utf-16-be"
    return "utf-8" if _first_non_ascii_is_utf8(head) else "windows-1252"


def _first_non_ascii_is_utf8(data: bytes) -> bool:
    """The rule Decoder follows too: a file is UTF-8 unless its first non-ASCII bytes are not
    (later invalid bytes are then an error, not a reason to guess again)."""
    try:
        data[: len(data) - _incomplete_utf8_tail(data)].decode("utf-8")
    except UnicodeDecodeError as exc:
        return not data[: exc.start].isascii()
    return True


def _incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end start a UTF-8 sequence that the next chunk completes."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if needed > back else 0
        return 0
    return 0


# Windows-1252 as browsers decode it (WHATWG): its five unassigned bytes map to the C1
# controls, as in Latin-1, so any byte sequence decodes and nothing is lost.
_WINDOWS_1252 = "".join(
    bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)
)



class Decoder:
    """Bytes -> text, chunk by chunk, in one of the encodings detect_encoding names (or latin-1).

    `decode` returns the text it could decode and, when the rest cannot be, the error to raise
    once that text has been used (so the error can name its line). Detected UTF-8 switches to
    Windows-1252 when the first non-ASCII bytes are not UTF-8: everything before was ASCII,
    which reads the same in both. UTF-8 that turns invalid after valid non-ASCII text, and
    broken UTF-16, are errors.
    """

    def __init__(self, encoding: str, *, detected: bool) -> None:
        self.encoding = encoding
        self._may_switch = detected and encoding == "utf-8"
        self._pending = b""
        self._at_start = True

    def decode(self, data: bytes, final: bool = False) -> tuple[str, ImportFailed | None]:
        data = self._pending + data
        self._pending = b""
        if self._at_start:
            if len(data) < 3 and not final:
                self._pending = data
                return "", None
            self._at_start = False
            data = _strip_bom(data, self.encoding)
        if self.encoding == "utf-8":
            return self._decode_utf8(data, final)
        if self.encoding in ("utf-16-le", "utf-16-be"):
            return self._decode_utf16(data, final)
        if self.encoding == "windows-1252":
            return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0], None
        return data.decode("latin-1"), None

    def _decode_utf8(self, data: bytes, final: bool) -> tuple[str, ImportFailed | None]:
        if self._may_switch and data.isascii():
            return data.decode("ascii"), None
        keep = 0 if final else _incomplete_utf8_tail(data)
        try:
            text = data[: len(data) - keep].decode("utf-8")
        except UnicodeDecodeError as exc:
            if self._may_switch and data[: exc.start].isascii():
                self.encoding = "windows-1252"
                return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0], None
            good = data[: exc.start].decode("utf-8")
            if exc.reason == "unexpected end of data":
                problem = "the file ends in the middle of a UTF-8 character."
            else:
                problem = f"byte 0x{data[exc.start]:02X} is not valid UTF-8."
            return good, ImportFailed(
                f"{problem} The file mixes text encodings: save it again as CSV UTF-8 and"
                " upload that, or choose its encoding."
            )
        self._pending = data[len(data) - keep:]
        self._may_switch = self._may_switch and text.isascii()
        return text, None

    def _decode_utf16(self, data: bytes, final: bool) -> tuple[str, ImportFailed | None]:
        codec = self.encoding
        end = len(data) - len(data) % 2
        if not final and end >= 2:
            unit = data[end - 2:end]
            high = unit[1] if codec == "utf-16-le" else unit[0]
            if 0xD8 <= high <= 0xDB:  # a high surrogate: its pair comes with the next chunk
                end -= 2
        self._pending = b"" if final else data[end:]
        try:
            text = data[:end].decode(codec)
        except UnicodeDecodeError as exc:
            good = data[: exc.start - exc.start % 2].decode(codec)
            return good, ImportFailed(
                "the text is not valid UTF-16 (a broken surrogate pair). Save the file again as"
                " CSV UTF-8 and upload that."
            )
        if final and end < len(data):
            return text, ImportFailed("the file ends in the middle of a UTF-16 character.")
        return text, None


def _strip_bom(data: bytes, encoding: str) -> bytes:
    bom = {"utf-8": codecs.BOM_UTF8, "utf-16-le": codecs.BOM_UTF16_LE,
           "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding)
    return data[len(bom):] if bom and data.startswith(bom) else data


def resolve_encoding(name: str, head: bytes) -> str:
    """An encoding the user chose, as a Decoder encoding ("utf-16" follows the byte order)."""
    kind = ENCODINGS.get(name.strip().lower())
    if kind is None:
        known = ", ".join(sorted({"utf-8", "utf-16", "windows-1252", "latin-1"}))
        raise ImportFailed(f"Unknown encoding {name!r}; choose one of {known}.")
    if kind == "utf-16":
        return "utf-16-be" if head.startswith(codecs.BOM_UTF16_BE) else "utf-16-le"
    return kind


class Lines:
    """Text chunks -> lines with their endings, as a file opened with newline="" yields them
    (what csv.reader expects: it keeps line breaks inside quoted fields). Each chunk's complete
    lines become one StringIO, chained, so csv.reader pulls lines without Python in between.

    A decoding error is raised where it happened: after the lines before it, naming its line.
    """

    def __init__(self, chunks: Iterable[tuple[str, ImportFailed | None]]) -> None:
        self._chunks = chunks
        self.count = 0  # lines handed out so far

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._buffers())

    def _buffers(self) -> Iterator[io.StringIO]:
        carry = ""
        for text, error in self._chunks:
            if "\x00" in text:
                text, error = _cut_at_nul(text)
            data = carry + text
            # Cut after the last line break, keeping a final "\r" back: a "\n" may follow it.
            end = max(data.rfind("\n"), data.rfind("\r", 0, len(data) - 1)) + 1
            if error is not None and data.endswith("\r"):
                end = len(data)
            complete, carry = data[:end], data[end:]
            if len(carry) > MAX_LINE_CHARS:
                error = ImportFailed(f"this line is longer than {MAX_LINE_CHARS:,} characters,"
                                     " so the file does not look like CSV text.")
            self.count += complete.count("\n") + complete.count("\r") - complete.count("\r\n")
            yield io.StringIO(complete, newline="")
            if error is not None:
                line = self.count + 1
                raise ImportFailed(f"Line {line}: {error}", line=line)
        if carry:
            self.count += 1
            yield io.StringIO(carry, newline="")


def _cut_at_nul(text: str) -> tuple[str, ImportFailed]:
    return text[: text.index("\x00")], ImportFailed(
        "this line contains binary data (a NUL byte), so the file does not look like CSV text."
    )


def decoded_chunks(
    chunks: Iterator[bytes], decoder: Decoder
) -> Iterator[tuple[str, ImportFailed | None]]:
    for chunk in chunks:
        text, error = decoder.decode(chunk)
        yield text, error
        if error is not None:
            return
    yield decoder.decode(b"", final=True)

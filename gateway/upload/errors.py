"""The answers an upload gets instead of a table: RequestErrors, rendered as JSON once."""

from __future__ import annotations

from ..config import UploadSettings
from ..errors import RequestError


class BadUpload(RequestError):
    status = 400
    title = "Bad upload"


class UploadTooLarge(RequestError):
    status = 413
    title = "File too large"


class CannotImport(RequestError):
    status = 422
    title = "Cannot import this file"


class UploadFailed(RequestError):
    status = 500
    title = "Upload failed"


class UploadStalled(RequestError):
    status = 408
    title = "Upload stalled"


class Forbidden(RequestError):
    status = 403
    title = "Not allowed"


def too_large(settings: UploadSettings) -> UploadTooLarge:
    return UploadTooLarge(f"The file is larger than this site's limit of"
                          f" {settings.max_file_mb:,} MB.")

"""The answers an upload gets instead of a table: RequestErrors, rendered as JSON once."""

from __future__ import annotations

from ..config import UploadSettings
from ..errors import RequestError
from ..words import duration


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


class NoSuchTable(RequestError):
    status = 404
    title = "No such table"


def too_large(settings: UploadSettings) -> UploadTooLarge:
    return UploadTooLarge(f"The file is larger than this site's limit of"
                          f" {settings.max_file_mb:,} MB.")


def too_long(settings: UploadSettings) -> UploadStalled:
    return UploadStalled(f"The upload took longer than this site's limit of"
                         f" {duration(settings.max_duration_s)}, so it was stopped and nothing"
                         " was imported.")


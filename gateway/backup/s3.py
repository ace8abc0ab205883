"""The little of S3's API Litestream does not do for us: delete a replica folder.

A removed tenant's replica is deleted after `backup.retention_h` (replicator.py); Litestream
has no command for that. Requests are signed with AWS Signature Version 4
(https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html), path-style
like Litestream's (`force-path-style`), with httpx.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ElementTree

import httpx

from ..config import BackupSettings
from ..errors import GatewayError
from .litestream import Credentials

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class StorageError(GatewayError):
    """The object storage answered with an error, or not at all."""


def _quote(text: str, safe: str = "") -> str:
    return urllib.parse.quote(text, safe="-_.~" + safe)


def sign(method: str, url: httpx.URL, region: str, credentials: Credentials,
         now: dt.datetime) -> dict[str, str]:
    """The headers that authenticate one request without a body (pure)."""
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = url.netloc.decode()
    query = sorted(urllib.parse.parse_qsl(url.query.decode(), keep_blank_values=True))
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query)
    headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method, _quote(urllib.parse.unquote(url.path), safe="/"), canonical_query,
        *(f"{name}:{headers[name]}" for name in sorted(headers)), "", signed, _EMPTY_SHA256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{credentials.secret_access_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {"x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": stamp,
            "authorization": f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope},"
                             f" SignedHeaders={signed}, Signature={signature}"}


class Bucket:
    def __init__(self, settings: BackupSettings, credentials: Credentials) -> None:
        self.settings = settings
        self.credentials = credentials
        self.base = settings.endpoint.rstrip("/") + "/" + _quote(settings.bucket)

    def _request(self, client: httpx.Client, method: str, url: str) -> httpx.Response:
        target = httpx.URL(url)
        headers = sign(method, target, self.settings.region, self.credentials,
                       dt.datetime.now(dt.UTC))
        try:
            response = client.request(method, target, headers=headers)
        except httpx.HTTPError as exc:
            raise StorageError(f"{self.settings.endpoint}: {exc or repr(exc)}") from None
        if response.status_code >= 300:
            raise StorageError(f"{method} {target.path}: {response.status_code}"
                               f" {response.text[:200]}")
        return response

    def keys(self, client: httpx.Client, prefix: str) -> list[str]:
        """Every key under `prefix` (ListObjectsV2, page after page)."""
        found: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            page = ElementTree.fromstring(self._request(
                client, "GET", f"{self.base}?{urllib.parse.urlencode(query)}").content)
            found += [element.text or "" for element in page.iter(f"{_NS}Key")]
            token = page.findtext(f"{_NS}NextContinuationToken") or ""
            if page.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return found

    def delete_folder(self, prefix: str) -> int:
        """Delete every object under `prefix`/; how many there were."""
        with httpx.Client(timeout=30, trust_env=False) as client:
            keys = self.keys(client, prefix.rstrip("/") + "/")
            for key in keys:
                self._request(client, "DELETE", f"{self.base}/{_quote(key, safe='/')}")
        return len(keys)

"""tls.mode = "files": the operator's certificate and key, re-read on every reload (SIGHUP)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from ..config import Config, TlsSettings
from ..errors import CertificateError, ConfigError, GatewayError
from ..tls import LiveContext, MinVersion, load_certificate
from .certificate import CertificateInfo, read_certificate

log = logging.getLogger(__name__)


class FileCertificates:
    def __init__(self, config: Config, live: LiveContext) -> None:
        self.live = live
        self.tls = config.gateway.tls
        self.info: CertificateInfo | None = None

    async def start(self) -> None:
        await self._load(self.tls)

    async def stop(self) -> None:
        pass

    async def apply(self, config: Config) -> None:
        await self._load(config.gateway.tls)

    async def _load(self, tls: TlsSettings) -> None:
        """Load the files; ConfigError (and the old certificate kept) if they are unusable."""
        if tls.cert_file is None or tls.key_file is None:
            raise ConfigError("tls.cert_file and tls.key_file are required in files mode")
        try:
            context, info = await asyncio.to_thread(_read_files, tls.cert_file, tls.key_file,
                                                    tls.min_version)
        except CertificateError as exc:
            raise ConfigError(f"tls.cert_file, tls.key_file: {exc}") from None
        self.live.install(context)
        self.tls, self.info = tls, info
        log.info("certificate_installed", extra={"source": str(tls.cert_file),
                                                 **info.describe()})

    def status(self) -> dict[str, Any]:
        return {
            "mode": "files",
            "cert_file": str(self.tls.cert_file),
            "key_file": str(self.tls.key_file),
            "certificate": self.info.describe() if self.info else None,
            "next_renewal": None,
            "renewal_basis": "replace the files, then run `gateway reload`",
        }

    async def renew(self, force: bool) -> dict[str, Any]:
        raise GatewayError('tls.mode is "files": replace tls.cert_file and tls.key_file, then'
                           " run `gateway reload`")


def _read_files(chain_file: Path, key_file: Path,
                min_version: MinVersion) -> tuple[ssl.SSLContext, CertificateInfo]:
    context = load_certificate(chain_file, key_file, min_version)
    return context, read_certificate(chain_file.read_bytes(), str(chain_file))

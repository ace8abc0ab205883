"""tls.mode = "acme": keep a valid certificate for <domain> and *.<domain> in the live context.

A background task sleeps until the next thing to do, then does it:

- renew when the CA's renewal information (ACME ARI, RFC 9773) says so, where the CA offers it;
  otherwise at two thirds of the certificate's lifetime; at once when there is no certificate,
  or it does not cover the names, or it came from another CA (tls.acme.directory_url changed);
- ask for renewal information after each issuance and whenever the CA says to ask again.

A failed attempt is logged and retried after tls.acme.retry_initial_s, doubling up to
tls.acme.retry_max_s. The current certificate is replaced only by a newer one that loaded:
failures never take it away. `gateway cert renew` runs the same attempt on demand.
When to act is decided by pure functions (`renewal_due`, `next_attempt`); the class does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..config import Config, TlsSettings
from ..errors import CertificateError
from ..tls import LiveContext, load_certificate
from .acme import RenewalAdvice, obtain_certificate, renewal_advice
from .certificate import renewal_certificate_id
from .dns import dns_provider
from .store import CertificateStore, StoredCertificate

log = logging.getLogger(__name__)

NOW = dt.datetime.min.replace(tzinfo=dt.UTC)  # "due" for a certificate to replace at once
MAX_SLEEP_S = 3600.0  # re-plan at least hourly: the wall clock may jump (suspend, NTP)


@dataclass(frozen=True, slots=True)
class Due:
    at: dt.datetime
    basis: str


def renewal_due(certificate: StoredCertificate | None, names: list[str], directory_url: str,
                advice: RenewalAdvice | None) -> Due:
    """When the certificate should be replaced, and why then."""
    if certificate is None:
        return Due(NOW, "no certificate yet")
    info = certificate.info
    if not info.covers(names):
        return Due(NOW, f"the certificate does not cover {', '.join(names)}")
    if certificate.directory_url != directory_url:
        return Due(NOW, "the certificate comes from another CA (tls.acme.directory_url)")
    if advice is not None and advice.renew_at is not None:
        return Due(min(advice.renew_at, info.not_after), "the CA's renewal window (ARI)")
    return Due(info.not_before + info.lifetime * 2 / 3, "two thirds of its lifetime")


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    return float(min(max_s, initial_s * 2 ** (failures - 1)))


def next_attempt(due: Due, failures: int, last_failure: dt.datetime | None,
                 initial_s: float, max_s: float) -> dt.datetime:
    if not failures or last_failure is None:
        return due.at
    retry = last_failure + dt.timedelta(seconds=backoff_s(failures, initial_s, max_s))
    return max(due.at, retry)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AcmeCertificates:
    def __init__(self, config: Config, live: LiveContext) -> None:
        self.live = live
        self.store = CertificateStore(config.gateway.paths.certs_dir)
        self._configure(config)
        self.current: StoredCertificate | None = None
        self.advice: RenewalAdvice | None = None
        self.ari_check_at: dt.datetime | None = None
        self.failures = 0
        self.last_failure: dt.datetime | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _configure(self, config: Config) -> None:
        self.tls: TlsSettings = config.gateway.tls
        self.names = [config.domain, f"*.{config.domain}"]
        self.provider = dns_provider(self.tls)

    async def start(self) -> None:
        """Serve the stored certificate if there is a usable one; renewal runs in the background.

        An expired or unreadable one is not served: HTTPS refuses handshakes until the new one.
        """
        try:
            stored = await asyncio.to_thread(self.store.load)
            if stored is not None and stored.info.not_after <= _now():
                raise CertificateError(f"{stored.path}: expired on {stored.info.not_after}")
            if stored is not None:
                await self._install(stored, "stored")
        except CertificateError as exc:
            log.error("certificate_unusable", extra={"error": str(exc)})
        self._task = asyncio.create_task(self._run(), name="certificate renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def apply(self, config: Config) -> None:
        """New settings (reload): the next step is re-planned with them, without backoff."""
        min_version_changed = config.gateway.tls.min_version != self.tls.min_version
        if config.gateway.tls != self.tls:  # perhaps the fix for the last failure: try at once
            self.failures, self.last_failure = 0, None
        self._configure(config)
        if min_version_changed and self.current is not None:
            await self._install(self.current, "stored")
        self._wake.set()

    def due(self) -> Due:
        return renewal_due(self.current, self.names, self.tls.acme.directory_url, self.advice)

    def status(self) -> dict[str, Any]:
        acme = self.tls.acme
        attempt = next_attempt(self.due(), self.failures, self.last_failure,
                               acme.retry_initial_s, acme.retry_max_s)
        return {
            "mode": "acme",
            "names": self.names,
            "directory_url": acme.directory_url,
            "certificate": self.current.info.describe() if self.current else None,
            "next_renewal": max(attempt, _now()).isoformat(timespec="seconds"),
            "renewal_basis": self.due().basis,
            "renewal_info": self.advice is not None and self.advice.renew_at is not None,
            "renewing": self._lock.locked(),
            "failures": self.failures,
            "last_error": self.last_error,
        }

    async def renew(self, force: bool) -> dict[str, Any]:
        """Renew now if due (or if forced); raise CertificateError if that fails."""
        renewed = await self._renew("forced" if force else None)
        self._wake.set()
        return {"renewed": renewed, **self.status()}

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            acme = self.tls.acme
            attempt = next_attempt(self.due(), self.failures, self.last_failure,
                                   acme.retry_initial_s, acme.retry_max_s)
            check_ari = self.ari_check_at is not None and self.ari_check_at < attempt
            at = self.ari_check_at if check_ari and self.ari_check_at else attempt
            delay = (at - _now()).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, MAX_SLEEP_S))
                continue
            try:
                if check_ari:
                    await self._check_renewal_info()
                else:
                    await self._renew(None)
            except CertificateError:
                pass  # logged where it happened; the next attempt is planned above
            except Exception:  # a bug must not end renewals: log it and back off
                log.exception("certificate_task_error")
                self._failed("internal error (see certificate_task_error)")

    async def _renew(self, forced: str | None) -> bool:
        async with self._lock:
            due = self.due()
            if forced is None and due.at > _now():
                return False
            reason = forced or due.basis
            log.info("certificate_requesting", extra={"names": self.names, "reason": reason,
                                                      "directory": self.tls.acme.directory_url})
            started = time.monotonic()
            try:
                account_key = await asyncio.to_thread(self.store.account_key_pem)
                issued = await obtain_certificate(self.tls, self.names, account_key,
                                                  self.provider, replaces=self._replaces())
                stored = await asyncio.to_thread(self.store.save, issued.chain_pem,
                                                 issued.key_pem, self.tls.acme.directory_url)
                await self._install(stored, "issued",
                                    seconds=round(time.monotonic() - started, 3))
            except CertificateError as exc:
                self._failed(str(exc))
                raise
            self.failures, self.last_failure, self.last_error = 0, None, None
            return True

    def _replaces(self) -> str | None:
        """The current certificate's id, for a CA that offers renewal information (RFC 9773)."""
        current, advice = self.current, self.advice
        if current is None or advice is None or advice.renew_at is None:
            return None
        if current.directory_url != self.tls.acme.directory_url:
            return None
        return renewal_certificate_id(current.chain_pem)

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_failure = _now()
        self.last_error = error
        acme = self.tls.acme
        log.error("certificate_failed", extra={
            "error": error, "failures": self.failures,
            "retry_in_s": backoff_s(self.failures, acme.retry_initial_s, acme.retry_max_s),
            "serving": self.current.info.describe()["serial"] if self.current else None,
        })

    async def _check_renewal_info(self) -> None:
        current = self.current
        if current is None:
            self.ari_check_at = None
            return
        try:
            advice = await renewal_advice(self.tls.acme, current.chain_pem)
        except CertificateError as exc:
            log.warning("certificate_renewal_info_failed", extra={"error": str(exc)})
            self.ari_check_at = _now() + dt.timedelta(seconds=self.tls.acme.retry_max_s)
            return
        if current is self.current:
            self.advice, self.ari_check_at = advice, advice.next_check
            log.info("certificate_renewal_info", extra={
                "offered": advice.renew_at is not None,
                "renew_at": advice.renew_at and advice.renew_at.isoformat(timespec="seconds"),
                "next_check": advice.next_check and advice.next_check.isoformat(
                    timespec="seconds"),
            })

    async def _install(self, stored: StoredCertificate, source: str, **fields: Any) -> None:
        context = await asyncio.to_thread(load_certificate, stored.path, None,
                                          self.tls.min_version)
        self.live.install(context)
        previous, self.current = self.current, stored
        if previous is None or previous.info != stored.info:
            self.advice = None
            self.ari_check_at = _now() if stored.directory_url == self.tls.acme.directory_url \
                else None
        log.info("certificate_installed", extra={
            "source": source, **stored.info.describe(), **fields})


"""Email: invitations and password reset links, sent through the SMTP server in [smtp].

smtplib is blocking, so a message is sent on a worker thread (asyncio.to_thread): the event
loop never waits on a mail server. Errors are mapped once, here, to MailError, whose message
names the server but never the password. With no smtp.host there is no Mailer at all, and the
pages say so (links to copy, "ask the operator").
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

from .config import SmtpSettings
from .errors import GatewayError


class MailError(GatewayError):
    """An email could not be sent; the message says where it failed."""


class Mailer:
    def __init__(self, settings: SmtpSettings, domain: str) -> None:
        self.settings = settings
        self.domain = domain
        self.from_address = settings.from_address or f"noreply@{domain}"

    @classmethod
    def configured(cls, settings: SmtpSettings, domain: str) -> Mailer | None:
        return cls(settings, domain) if settings.host else None

    def message(self, to: str, subject: str, body: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.from_address
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self.domain)
        message.set_content(body)
        return message

    async def send(self, to: str, subject: str, body: str) -> None:
        """Send one plain-text email; raises MailError."""
        await asyncio.to_thread(self._send, self.message(to, subject, body))

    def _send(self, message: EmailMessage) -> None:
        settings = self.settings
        where = f"{settings.host}:{settings.port}"
        try:
            password = (settings.password_file.read_text().strip()
                        if settings.password_file else "")
            with self._connect() as smtp:
                if settings.security == "starttls":
                    smtp.starttls(context=self._tls())
                if settings.user:
                    smtp.login(settings.user, password)
                smtp.send_message(message)
        except smtplib.SMTPException as exc:  # an OSError too: first
            raise MailError(f"the SMTP server {where} refused the email: {exc}") from None
        except OSError as exc:  # refused, timeouts, TLS failures, unreadable password file
            raise MailError(f"cannot send email through {where}: {exc}") from None

    def _connect(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.security == "tls":
            return smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_s,
                                    context=self._tls())
        return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)

    def _tls(self) -> ssl.SSLContext:
        ca_file = self.settings.ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

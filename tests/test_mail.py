"""gateway/mail.py against a real SMTP server (aiosmtpd): STARTTLS, TLS and plain, with a login,
a certificate from a private CA; errors that name the server and never the password."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography.hazmat.primitives import serialization

from gateway.config import SmtpSettings
from gateway.mail import Mailer, MailError

from .acme_servers import key_pem, make_certificate
from .smtp_server import Mailbox, _free_port

SECRET = "s3cret-smtp-password"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A private CA's file, and a server context with a certificate it signed for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("pki")
    ca = make_certificate(["Test SMTP CA"], is_ca=True)
    cert, key = make_certificate(["localhost"], issuer=ca, ip="127.0.0.1")
    (folder / "ca.pem").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return folder / "ca.pem", context


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                 data: Any) -> AuthResult:
    ok = (isinstance(data, LoginPassword) and data.login == b"gw"
          and data.password == SECRET.encode())
    return AuthResult(success=ok, handled=False)  # handled=True: aiosmtpd would not answer


@pytest.fixture(params=["starttls", "tls"])
def server(request: pytest.FixtureRequest, pki: tuple[Path, ssl.SSLContext]
           ) -> Iterator[tuple[str, Mailbox, int]]:
    box = Mailbox()
    port = _free_port()
    if request.param == "starttls":
        controller = Controller(box, hostname="127.0.0.1", port=port, tls_context=pki[1],
                                require_starttls=True, authenticator=authenticate,
                                auth_require_tls=True)
    else:
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this is TLS throughout.
        controller = Controller(box, hostname="127.0.0.1", port=port, ssl_context=pki[1],
                                authenticator=authenticate, auth_require_tls=False,
                                server_hostname="localhost")
    controller.start()
    try:
        yield request.param, box, port
    finally:
        controller.stop()


def settings(tmp_path: Path, ca_file: Path | None, security: str, port: int,
             password: str = SECRET) -> SmtpSettings:
    password_file = tmp_path / "password"
    password_file.write_text(password + "\n")
    return SmtpSettings(host="127.0.0.1", port=port, security=security,  # type: ignore[arg-type]
                        user="gw", password_file=password_file, ca_file=ca_file,
                        from_address="Data <noreply@gw.test>")


async def test_sends_over_tls_with_a_login(tmp_path: Path, pki: tuple[Path, ssl.SSLContext],
                                           server: tuple[str, Mailbox, int]) -> None:
    security, box, port = server
    mailer = Mailer(settings(tmp_path, pki[0], security, port), "gw.test")
    await mailer.send("ann@example.com", "Hello", "The body.\n")
    [message] = box.to("ann@example.com")
    assert message["From"] == "Data <noreply@gw.test>"
    assert message["Subject"] == "Hello"
    assert message["Message-ID"].endswith("@gw.test>")
    assert message.get_payload() == "The body.\r\n"  # as on the wire


async def test_errors_name_the_server_not_the_password(
        tmp_path: Path, pki: tuple[Path, ssl.SSLContext],
        server: tuple[str, Mailbox, int]) -> None:
    """A wrong password, an untrusted certificate, a closed port: MailError, saying where."""
    security, box, port = server
    wrong = Mailer(settings(tmp_path, pki[0], security, port, password="wrong-one"), "gw.test")
    with pytest.raises(MailError, match=rf"^the SMTP server 127\.0\.0\.1:{port} refused the"
                       " email: .*535") as refused:
        await wrong.send("ann@example.com", "Hello", "x")
    untrusted = Mailer(settings(tmp_path, None, security, port), "gw.test")  # system CAs only
    with pytest.raises(MailError, match=rf"^cannot send email through 127\.0\.0\.1:{port}: "
                       ".*CERTIFICATE_VERIFY_FAILED") as not_trusted:
        await untrusted.send("ann@example.com", "Hello", "x")
    closed = Mailer(settings(tmp_path, pki[0], security, _free_port()), "gw.test")
    with pytest.raises(MailError, match="Connection refused"):
        await closed.send("ann@example.com", "Hello", "x")
    for error in (refused.value, not_trusted.value):
        assert SECRET not in str(error) and "wrong-one" not in str(error)
    assert box.messages == []

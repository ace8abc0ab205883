"""ACME (RFC 8555) with the `acme` library: account, order, DNS-01, finalize, renewal info.

`obtain_certificate` is the whole issuance. The library is blocking (requests), so each of its
steps runs in a worker thread (`asyncio.to_thread`), with the DNS publishing of dns.py between
them:

    account (found by its key, else registered, with External Account Binding if configured)
    -> order for <domain> and *.<domain> -> both DNS-01 values published at once, visible on
    the zone's servers -> challenges answered, authorizations valid -> records removed
    -> finalize with a fresh key's CSR -> chain downloaded

CAs reject a valid nonce now and then (RFC 8555 6.5: badNonce) and the library retries a
request only once, so RetryingNetwork retries it more. Library errors become CertificateError
here, once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.json_util import field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from ..config import AcmeSettings, TlsSettings
from ..errors import CertificateError
from .dns import DnsProvider, published
from .store import read_secret

log = logging.getLogger(__name__)

T = TypeVar("T")
USER_AGENT = "gateway (acme-python)"
BAD_NONCE_ATTEMPTS = 8  # each is two tries: the library retries once itself


@dataclass(frozen=True, slots=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class RenewalAdvice:
    """What the CA's renewal information (RFC 9773) says; renew_at None: the CA offers none."""

    renew_at: dt.datetime | None
    next_check: dt.datetime | None


@dataclass(frozen=True, slots=True)
class DnsChallenge:
    record_name: str
    value: str
    challenge: messages.ChallengeBody
    response: challenges.ChallengeResponse


class NewOrder(messages.NewOrder):
    """A newOrder that can say which certificate it replaces (RFC 9773 5), which acme 5.9's
    NewOrder cannot. Let's Encrypt exempts such renewals from its rate limits."""

    replaces: str | None = field("replaces", omitempty=True)


async def obtain_certificate(tls: TlsSettings, names: list[str], account_key_pem: bytes,
                             provider: DnsProvider, *, replaces: str | None = None) -> Issued:
    """A certificate for `names`; `replaces` is the renewal certificate id of the one it
    replaces, when the CA offers renewal information."""
    key_pem = await asyncio.to_thread(new_private_key, tls.acme.key_type)
    csr_pem = crypto_util.make_csr(key_pem, names)
    session = AcmeSession(tls.acme, account_key_pem)
    try:
        await asyncio.to_thread(session.connect, with_account=True)
        order = await asyncio.to_thread(session.order, names, csr_pem, replaces)
        pending = dns_challenges(order, session.account_key)
        if pending:  # none when the CA reused valid authorizations
            records: dict[str, list[str]] = {}
            for item in pending:
                records.setdefault(item.record_name, []).append(item.value)
            async with published(provider, records, tls.dns):
                order = await asyncio.to_thread(session.validate, order, pending)
        chain_pem = await asyncio.to_thread(session.finalize, order)
    finally:
        session.close()
    return Issued(chain_pem.encode(), key_pem)


async def renewal_advice(settings: AcmeSettings, chain_pem: bytes) -> RenewalAdvice:
    session = AcmeSession(settings, None)
    try:
        await asyncio.to_thread(session.connect, with_account=False)
        return await asyncio.to_thread(session.renewal_advice, chain_pem)
    finally:
        session.close()


def dns_challenges(order: messages.OrderResource, account_key: JWK) -> list[DnsChallenge]:
    """The dns-01 challenge of every authorization still pending, with its TXT record. Pure."""
    found = []
    for authorization in order.authorizations:
        body = authorization.body
        if body.status == messages.STATUS_VALID:
            continue
        name = body.identifier.value
        challenge = next((c for c in body.challenges if isinstance(c.chall, challenges.DNS01)),
                         None)
        if challenge is None:
            raise CertificateError(f"the CA offers no dns-01 challenge for {name}")
        response, value = challenge.chall.response_and_validation(account_key)
        found.append(DnsChallenge(challenge.chall.validation_domain_name(name), value,
                                  challenge, response))
    return found


def new_private_key(key_type: str) -> bytes:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type.startswith("ecdsa-"):
        curve = {"ecdsa-p256": ec.SECP256R1(), "ecdsa-p384": ec.SECP384R1()}[key_type]
        key = ec.generate_private_key(curve)
    else:
        key = rsa.generate_private_key(public_exponent=65537,
                                       key_size=int(key_type.removeprefix("rsa-")))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class AcmeSession:
    """One conversation with the CA, over one HTTP session. Blocking: call from a thread."""

    def __init__(self, settings: AcmeSettings, account_key_pem: bytes | None) -> None:
        self.settings = settings
        key = serialization.load_pem_private_key(account_key_pem, None) if account_key_pem \
            else ec.generate_private_key(ec.SECP256R1())  # unsigned GETs only (renewal info)
        self.account_key = JWKEC(key=key)
        verify: Any = str(settings.ca_file) if settings.ca_file else True  # requests' verify=
        self.network = RetryingNetwork(self.account_key, alg=ES256, user_agent=USER_AGENT,
                                       verify_ssl=verify)
        self._client: client.ClientV2 | None = None

    @property
    def client(self) -> client.ClientV2:
        if self._client is None:
            raise RuntimeError("AcmeSession.connect() first")
        return self._client

    def close(self) -> None:
        self.network.session.close()

    def connect(self, *, with_account: bool) -> None:
        directory = self._step("reading the directory", client.ClientV2.get_directory,
                               self.settings.directory_url, self.network)
        self._client = client.ClientV2(directory, self.network)
        if with_account:
            self._step("finding the account", self._account)

    def _account(self) -> None:
        acme = self.client
        try:  # RFC 8555 7.3.1: the key finds its account
            acme.new_account(messages.NewRegistration(only_return_existing=True))
        except errors.ConflictError as existing:
            self.network.account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration())
            return
        except messages.Error as exc:
            if exc.code != "accountDoesNotExist":
                raise
        binding = None
        if self.settings.eab_kid and self.settings.eab_hmac_key_file:
            hmac_key = read_secret(self.settings.eab_hmac_key_file, "tls.acme.eab_hmac_key_file")
            binding = messages.ExternalAccountBinding.from_data(
                account_public_key=self.account_key.public_key(), kid=self.settings.eab_kid,
                hmac_key=hmac_key, directory=acme.directory)
        registration = messages.NewRegistration.from_data(
            email=self.settings.email or None, terms_of_service_agreed=True,
            external_account_binding=binding)
        account = acme.new_account(registration)
        log.info("acme_account_registered", extra={"account": account.uri,
                                                   "directory": self.settings.directory_url})

    def order(self, names: list[str], csr_pem: bytes,
              replaces: str | None) -> messages.OrderResource:
        return self._step("ordering", self._new_order, names, csr_pem, replaces)

    def _new_order(self, names: list[str], csr_pem: bytes,
                   replaces: str | None) -> messages.OrderResource:
        """ClientV2.new_order, plus `replaces`, from the library's public calls only."""
        directory = self.client.directory
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
                       for name in names]
        try:
            response = self.network.post(directory["newOrder"],
                                         NewOrder(identifiers=identifiers, replaces=replaces),
                                         new_nonce_url=directory["newNonce"])
        except messages.Error as exc:
            # Another order already replaces it (an earlier attempt that failed later on).
            if replaces is None or not str(exc.typ).endswith(":alreadyReplaced"):
                raise
            return self._new_order(names, csr_pem, None)
        body = messages.Order.from_json(response.json())
        authorizations = []
        for url in body.authorizations:
            answer = self.network.post(url, None, new_nonce_url=directory["newNonce"])
            authorizations.append(messages.AuthorizationResource(
                body=messages.Authorization.from_json(answer.json()), uri=url))
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)

    def validate(self, order: messages.OrderResource,
                 pending: list[DnsChallenge]) -> messages.OrderResource:
        for item in pending:
            self._step("answering a challenge", self.client.answer_challenge, item.challenge,
                       item.response)
        return self._step("waiting for validation", self.client.poll_authorizations, order,
                          self._deadline())

    def finalize(self, order: messages.OrderResource) -> str:
        done = self._step("finalizing", self.client.finalize_order, order, self._deadline())
        return str(done.fullchain_pem)

    def renewal_advice(self, chain_pem: bytes) -> RenewalAdvice:
        try:
            self.client.directory["renewalInfo"]
        except KeyError:
            return RenewalAdvice(None, None)
        try:
            renew_at, next_check = self.client.renewal_time(chain_pem)
        except errors.ARIError as exc:
            cause = exc.__cause__ or exc
            raise CertificateError(f"cannot read the CA's renewal information: {cause}") from None
        # renewal_time gives a naive local next_check beside an aware renew_at.
        return RenewalAdvice(renew_at, next_check.astimezone(dt.UTC))

    def _deadline(self) -> dt.datetime:
        # The library compares its deadlines with naive local datetime.now().
        return dt.datetime.now() + dt.timedelta(seconds=self.settings.timeout_s)

    def _step(self, step: str, call: Callable[..., T], *args: Any) -> T:
        """Run one step of the conversation; the library's errors become CertificateError."""
        try:
            return call(*args)
        except messages.Error as exc:
            raise CertificateError(f"{step}: the CA said {_problem(exc)}") from None
        except errors.ValidationError as exc:
            raise CertificateError(f"{step}: {_failed_validations(exc)}") from None
        except errors.TimeoutError:
            raise CertificateError(f"{step}: the CA did not finish within"
                                   f" {self.settings.timeout_s:g} s (tls.acme.timeout_s)") from None
        except requests.RequestException as exc:
            raise CertificateError(f"{step}: cannot reach the CA at"
                                   f" {self.settings.directory_url}: {exc}") from None
        except errors.Error as exc:
            raise CertificateError(f"{step}: {exc}") from None


class RetryingNetwork(client.ClientNetwork):
    """The library's network layer, retrying a request the CA refused for its nonce up to
    BAD_NONCE_ATTEMPTS times rather than once. RFC 8555 6.5: the CA rejects such a request
    before acting on it, so sending it again with a fresh nonce is always safe."""

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(1, BAD_NONCE_ATTEMPTS):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as exc:
                if exc.code != "badNonce":
                    raise
                log.warning("acme_bad_nonce", extra={"attempt": attempt})
        return super().post(*args, **kwargs)


def _problem(error: messages.Error) -> str:
    return f"{error.code or error.typ}: {error.detail or error.description or ''}".rstrip(": ")


def _failed_validations(error: errors.ValidationError) -> str:
    failures = []
    for authorization in error.failed_authzrs:
        body = authorization.body
        name = ("*." if body.wildcard else "") + body.identifier.value
        problems = [_problem(c.error) for c in body.challenges if c.error is not None]
        failures.append(f"{name}: {'; '.join(problems) or body.status}")
    return "the CA could not validate " + ", ".join(failures)

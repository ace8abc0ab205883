"""gateway.toml and tenants/ -> frozen dataclasses, strictly.

Every key is declared once, below, with its default and its help text; README.md documents each
one (tests/test_docs.py checks). The TOML is parsed once: everything downstream gets dataclasses.
Unknown keys, wrong types and bad values raise ConfigError naming the file and the key:

    gateway.toml: proxy.retry_budget_s: expected a number, got "lots"
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, TenantNameError

DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
TENANT_SETTINGS_FILE = "tenant.toml"
METADATA_FILES = ("metadata.json", "metadata.yaml", "metadata.yml")
PLUGINS_DIR = "plugins"
DATA_DIR = "data"

# Names a tenant cannot take: they are, or look like, the gateway's own or well-known hosts.
RESERVED_NAMES = frozenset({
    "www", "admin", "api", "app", "assets", "auth", "autoconfig", "autodiscover", "blog", "cdn",
    "dashboard", "docs", "ftp", "gateway", "help", "imap", "login", "mail", "mx", "ns", "ns1",
    "ns2", "pop", "pop3", "root", "smtp", "static", "status", "support", "webmail",
})
_NAME_PATTERN = re.compile(r"[a-z0-9-]{1,63}")

# A Unix socket path must fit sockaddr_un.sun_path (108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107
_SOCKET_SUFFIX_ROOM = len("/4294967295/ds.sock")  # see spawner.Spawner: run_dir/<generation>/


def setting(default: Any, help: str, *, check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare one configuration key: its default, its documentation and an optional check."""
    metadata = {"help": help, "check": check}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type[Any]) -> Any:
    """Declare a [section] of settings (a dataclass of its own)."""
    return field(default_factory=cls, metadata={"help": "", "check": None})


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = setting("0.0.0.0", "Address the HTTP and HTTPS listeners bind to.")
    http_port: int = setting(
        80, "Port for plain HTTP. With TLS on it only redirects to HTTPS.", check=_port
    )
    https_port: int = setting(443, "Port for HTTPS (used when tls.mode is not off).", check=_port)
    public_port: int = setting(
        0, "The port browsers reach the gateway on, when a port mapping (docker's -p 8080:80)"
        " makes it another than the listening one; 0: the listening port (https_port with TLS,"
        " else http_port). Sign-in redirects name it.", check=_port,
    )


@dataclass(frozen=True, slots=True)
class PathSettings:
    tenants_dir: Path = setting(
        Path("tenants"), "Folder holding one folder per tenant (relative to gateway.toml)."
    )
    certs_dir: Path = setting(Path("certs"), "Where certificates and the ACME account key live.")
    state_dir: Path = setting(
        Path("state"), "The gateway's own state: accounts database, secrets. Never a tenant's."
    )
    run_dir: Path = setting(
        Path("state/run"),
        "Sockets: the control socket and one folder per tenant process. Keep the path short:"
        " Unix socket paths are limited to 107 bytes.",
    )


@dataclass(frozen=True, slots=True)
class ProxySettings:
    connect_timeout_s: float = setting(
        5.0, "Seconds to wait for a tenant's socket to accept a connection.", check=_positive
    )
    response_timeout_s: float = setting(
        60.0,
        "Seconds to wait for a tenant to start answering (status line and headers) before"
        " answering 504.",
        check=_positive,
    )
    retry_budget_s: float = setting(
        10.0,
        "How long a request that could not reach its tenant is retried (with backoff) before"
        " answering 502. 0 disables retries.",
        check=_non_negative,
    )
    replay_body_max_bytes: int = setting(
        1024 * 1024,
        "Request bodies up to this size are read whole before the request takes one of its"
        " tenant's slots (a client that sends slowly holds none), and can be replayed when the"
        " tenant could not have seen them. Larger bodies are streamed, never replayed, and"
        " such requests may hold at most half of the slots.",
        check=_non_negative,
    )
    max_connections_per_tenant: int = setting(
        32,
        "Most requests in flight to one tenant process at once; more wait their turn, so one"
        " busy tenant cannot take every CPU.",
        check=_positive,
    )
    drain_timeout_s: float = setting(
        30.0,
        "When a tenant process is replaced, how long its in-flight requests may take to finish"
        " before it is stopped anyway.",
        check=_non_negative,
    )
    queue_timeout_s: float = setting(
        10.0,
        "How long a request waits for one of its tenant's max_connections_per_tenant slots"
        " before it is answered 503 with Retry-After.",
        check=_positive,
    )
    response_buffer_bytes: int = setting(
        8 * 1024 * 1024,
        "Responses up to this size are read whole from the tenant before they are sent, so the"
        " tenant's slot and connection are free again however slowly the client reads. Larger"
        " ones are streamed.",
        check=_non_negative,
    )
    response_buffer_total_bytes: int = setting(
        16 * 1024 * 1024,
        "Most response bytes held in such buffers at once, over all requests: the memory a"
        " crowd of slow readers can cost the gateway. Past it, responses are streamed.",
        check=_non_negative,
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """What one client connection may cost: timeouts and the request head's size. Set when
    the listeners start: a change applies at the next start or `gateway upgrade`."""

    head_timeout_s: float = setting(
        30.0,
        "Seconds a connection has to send a whole request head (request line and headers),"
        " counted from the connection or the first byte of the request; then it is closed.",
        check=_positive,
    )
    keepalive_timeout_s: float = setting(
        15.0,
        "Seconds an idle keep-alive connection stays open waiting for its next request.",
        check=_positive,
    )
    body_timeout_s: float = setting(
        30.0,
        "Longest pause while a request body arrives (between two reads, not for the whole"
        " body); then the request is abandoned (408) and its tenant slot freed.",
        check=_positive,
    )
    send_timeout_s: float = setting(
        30.0,
        "Longest a client may go without accepting any of the response waiting for it; then"
        " the connection is closed and what was buffered for it is freed.",
        check=_positive,
    )
    max_head_bytes: int = setting(
        32 * 1024,
        "Largest request head (request line and headers) accepted; a larger one is answered"
        " 431 before it is read whole.",
        check=_positive,
    )


def _datasette_setting_check(settings: Mapping[str, Any]) -> str | None:
    from .datasette_settings import unknown_setting_error

    return unknown_setting_error(settings)


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Per-tenant settings: `[tenant_defaults]` in gateway.toml, overridden by tenant.toml."""

    public: bool = setting(
        False, "Whether anyone may browse the tenant; otherwise only its members may."
    )
    title: str = setting("", "Shown on the gateway's pages; defaults to the tenant's name.")
    memory_mb: int = setting(
        1024, "Address-space limit of the tenant's Datasette process (RLIMIT_AS).", check=_positive
    )
    open_files: int = setting(
        1024, "Open file limit of the tenant's process (RLIMIT_NOFILE).", check=_positive
    )
    processes: int = setting(
        64, "Process and thread limit of the tenant's user (RLIMIT_NPROC).", check=_positive
    )
    start_timeout_s: float = setting(
        30.0, "Seconds a new tenant process has to pass its health check.", check=_positive
    )
    stop_timeout_s: float = setting(
        5.0,
        "Seconds a stopping tenant process has to finish in-flight requests after SIGTERM"
        " before it is killed.",
        check=_non_negative,
    )
    idle_stop_s: float = setting(
        0.0,
        "Seconds without a request after which the tenant's process is stopped (it sleeps);"
        " the next request starts it again. Uploads and requests in flight keep it awake."
        " 0: it never sleeps.",
        check=_non_negative,
    )
    datasette: dict[str, str | int | float | bool] = setting(
        {},
        "Datasette settings passed as --setting NAME VALUE, e.g. sql_time_limit_ms = 1000."
        " Booleans become on/off.",
        check=_datasette_setting_check,
    )


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    isolation: Literal["auto", "required", "off"] = setting(
        "auto",
        "auto: the strongest isolation this machine allows, logged at start; required: refuse"
        " to start tenants without the full sandbox; off: run tenants as the gateway's user.",
    )
    uid_min: int = setting(
        20000, "First uid/gid given to tenants when the gateway runs as root.", check=_positive
    )
    uid_max: int = setting(29999, "Last uid/gid given to tenants.", check=_positive)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    restart_backoff_initial_s: float = setting(
        0.2, "Wait before restarting a crashed tenant; doubles on each crash.", check=_positive
    )
    restart_backoff_max_s: float = setting(
        30.0, "Longest wait between restarts of a crashing tenant.", check=_positive
    )
    crash_loop_restarts: int = setting(
        5,
        "A tenant that crashes this many times within crash_loop_window_s is marked failed and"
        " answers 503 for failed_cooldown_s, or until it is restarted or changed.",
        check=_positive,
    )
    crash_loop_window_s: float = setting(
        60.0, "Window for counting crashes (see crash_loop_restarts).", check=_positive
    )
    failed_cooldown_s: float = setting(
        300.0,
        "How long a failed tenant rests before it is started again by itself, with a fresh count"
        " of crashes. 0: it stays failed until it is restarted or changed.",
        check=_non_negative,
    )


def _hsts_age(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more (0 tells browsers to forget the policy)"


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    directory_url: str = setting(
        "https://acme-v02.api.letsencrypt.org/directory",
        "The CA's ACME directory. Let's Encrypt's staging CA, for trying things out:"
        " https://acme-staging-v02.api.letsencrypt.org/directory.",
    )
    email: str = setting("", "Contact address registered with the CA (optional).")
    ca_file: Path | None = setting(
        None,
        "PEM file of CA certificates to trust for the ACME server's own HTTPS (a private CA,"
        " or a test CA such as pebble). Default: the system's trust store.",
    )
    eab_kid: str = setting(
        "", "External Account Binding key id, for CAs that require one (ZeroSSL, Google, ...)."
    )
    eab_hmac_key_file: Path | None = setting(
        None, "File holding the External Account Binding HMAC key (base64url, as the CA gives it)."
    )
    key_type: Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096"] = setting(
        "ecdsa-p256", "Type of the certificate's private key; a new key is made for every"
        " certificate."
    )
    timeout_s: float = setting(
        120.0, "How long the CA may take to validate and issue, per attempt.", check=_positive
    )
    retry_initial_s: float = setting(
        60.0, "Wait after a failed issuance or renewal before trying again; doubles on each"
        " failure.", check=_positive
    )
    retry_max_s: float = setting(
        3600.0, "Longest wait between attempts after failures.", check=_positive
    )


@dataclass(frozen=True, slots=True)
class DnsSettings:
    provider: Literal["rfc2136", "digitalocean", "exec"] = setting(
        "rfc2136", "How the DNS-01 TXT records are published: rfc2136 (dynamic update, with"
        " TSIG), digitalocean (its DNS API) or exec (your own script)."
    )
    zone: str = setting(
        "", "The DNS zone holding the domain; default: the domain itself. Set it when the"
        " domain is a subdomain of the zone (domain = data.example.com, zone = example.com)."
    )
    ttl_s: int = setting(60, "TTL of the TXT records.", check=_positive)
    wait_servers: tuple[str, ...] = setting(
        (),
        "Name servers (host or host:port) that must answer with the TXT values before the CA"
        " is asked to look. Default: the zone's authoritative servers (its NS records).",
    )
    wait_timeout_s: float = setting(
        300.0, "How long to wait for those servers to answer with the TXT values.",
        check=_positive,
    )


@dataclass(frozen=True, slots=True)
class Rfc2136Settings:
    server: str = setting("", "Host name or address of the name server that takes updates.")
    port: int = setting(53, "Its port.", check=_port)
    tsig_key_name: str = setting("", "Name of the TSIG key that signs updates.")
    tsig_algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = setting(
        "hmac-sha256", "Algorithm of the TSIG key."
    )
    tsig_secret_file: Path | None = setting(
        None, "File holding the TSIG secret (base64, as `keymgr` or `tsig-keygen` print it)."
    )


@dataclass(frozen=True, slots=True)
class DigitalOceanSettings:
    token_file: Path | None = setting(
        None, "File holding a DigitalOcean API token with read and write access to domains."
    )
    api_url: str = setting("https://api.digitalocean.com/v2", "DigitalOcean's API.")


@dataclass(frozen=True, slots=True)
class ExecSettings:
    command: tuple[str, ...] = setting(
        (),
        "Program and arguments run as COMMAND... add|remove NAME VALUE, e.g."
        ' ["/etc/gateway/dns-hook"]. NAME is the full record name (_acme-challenge.<domain>);'
        " exit 0 on success.",
    )
    timeout_s: float = setting(60.0, "How long one run of the command may take.",
                               check=_positive)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    mode: Literal["off", "files", "acme"] = setting(
        "off", "off: plain HTTP only (the demo); files: a certificate you supply (cert_file,"
        " key_file); acme: a wildcard certificate obtained and renewed over DNS-01."
    )
    cert_file: Path | None = setting(
        None, "files mode: the certificate chain (PEM, leaf first). Re-read on reload."
    )
    key_file: Path | None = setting(None, "files mode: its private key (PEM).")
    min_version: Literal["1.2", "1.3"] = setting("1.2", "Oldest TLS version accepted.")
    hsts_max_age_s: int = setting(
        31536000, "max-age of the Strict-Transport-Security header on HTTPS answers.",
        check=_hsts_age,
    )
    hsts_include_subdomains: bool = setting(
        False, "Add includeSubDomains to that header. Only if every name under the domain"
        " speaks HTTPS: it also covers names the gateway does not serve."
    )
    acme: AcmeSettings = setting(AcmeSettings(), "")
    dns: DnsSettings = setting(DnsSettings(), "")
    rfc2136: Rfc2136Settings = setting(Rfc2136Settings(), "")
    digitalocean: DigitalOceanSettings = setting(DigitalOceanSettings(), "")
    exec: ExecSettings = setting(ExecSettings(), "")


@dataclass(frozen=True, slots=True)
class LogSettings:
    access_log: bool = setting(True, "Write one JSON line per request to stdout.")
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "Level of the gateway's own event log (JSON lines on stderr)."
    )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    session_idle_s: float = setting(
        7 * 86400.0, "A session nobody uses for this long ends (seconds).", check=_positive
    )
    session_max_s: float = setting(
        30 * 86400.0, "A session ends this long after sign-in, used or not (seconds).",
        check=_positive,
    )
    session_cache_s: float = setting(
        5.0,
        "How long the gateway trusts what it read about a session or API token before reading"
        " it again. Changes made with the CLI (removed users, memberships, revoked tokens), and"
        " sign-outs served by another gateway process, take effect within this time.",
        check=_positive,
    )
    invite_ttl_s: float = setting(
        7 * 86400.0, "How long a `gateway user invite` link stays valid (seconds).", check=_positive
    )
    password_min_length: int = setting(
        10, "Shortest password accepted for a new account or a new password.", check=_positive
    )
    password_time_cost: int = setting(
        3, "argon2id iterations. Stored hashes are upgraded at the next sign-in when the three"
        " password_* parameters change.", check=_positive
    )
    password_memory_kib: int = setting(
        65536,
        "argon2id memory per hash, in KiB (64 MiB takes about 0.1 s per sign-in on one core).",
        check=_positive,
    )
    password_parallelism: int = setting(4, "argon2id lanes.", check=_positive)
    throttle_account_attempts: int = setting(
        5,
        "Failed sign-ins allowed for one email address before each further attempt must wait"
        " (the wait doubles with every failure).",
        check=_positive,
    )
    throttle_address_attempts: int = setting(
        20,
        "Failed sign-ins allowed from one client address (IPv6: one /64) before each further"
        " attempt must wait.",
        check=_positive,
    )
    throttle_backoff_initial_s: float = setting(
        1.0, "The first wait once the free attempts are used up.", check=_positive
    )
    throttle_backoff_max_s: float = setting(
        900.0, "The longest wait between two sign-in attempts.", check=_positive
    )
    throttle_window_s: float = setting(
        3600.0, "Failed attempts are forgotten after this long without another failure.",
        check=_positive,
    )


@dataclass(frozen=True, slots=True)
class UploadSettings:
    max_file_mb: int = setting(
        1024, "Largest CSV file members may upload at /-/upload; a larger one is refused (413).",
        check=_positive,
    )
    idle_timeout_s: float = setting(
        60.0, "An upload that sends nothing for this long is abandoned; nothing is imported.",
        check=_positive,
    )
    max_duration_s: float = setting(
        3600.0, "An upload still arriving or being read this long after it started is stopped"
        " (408) and nothing is imported: a client that sends a byte now and then never ends.",
        check=_positive,
    )


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = setting(
        "", "SMTP server that sends invitations and password reset links. Empty: no email; the"
        " Team page shows invitation links to copy, and the sign-in page says to ask the"
        " operator for a new password."
    )
    port: int = setting(587, "Its port (587 for starttls, 465 for tls, 25 for none).",
                        check=_port)
    security: Literal["starttls", "tls", "none"] = setting(
        "starttls", "starttls: upgrade the connection (STARTTLS, required); tls: TLS from the"
        " first byte (SMTPS); none: plain text (a relay on the same machine only)."
    )
    user: str = setting("", "User name to log in with; empty: no login.")
    password_file: Path | None = setting(
        None, "File holding the password for `user` (read when an email is sent)."
    )
    from_address: str = setting(
        "", "The From address of the gateway's emails, e.g. \"Data <noreply@example.com>\"."
        " Default: noreply@<domain>."
    )
    ca_file: Path | None = setting(
        None, "PEM file of CA certificates to trust for the server's TLS certificate (a private"
        " CA). Default: the system's trust store."
    )
    timeout_s: float = setting(30.0, "How long talking to the SMTP server may take.",
                               check=_positive)
    reset_ttl_s: float = setting(
        3600.0, "How long a password reset link stays valid (seconds).", check=_positive
    )


def parse_listen(value: str) -> tuple[str, int] | None:
    """'127.0.0.1:9464' / '[::1]:0' -> (host, port); None if not a host:port (port 0: any)."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def _metrics_listen(value: str) -> str | None:
    if value == "" or parse_listen(value) is not None:
        return None
    return 'expected host:port, e.g. "127.0.0.1:9464" (or "" for no metrics)'


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str = setting(
        "127.0.0.1:9464",
        "Where Prometheus scrapes /metrics (host:port). Not public: keep it on loopback or a"
        ' private network. "" turns metrics off. Sign-in, upload, certificate and reload'
        " counts come from their log events: they need log.level info or debug.",
        check=_metrics_listen,
    )


@dataclass(frozen=True, slots=True)
class BackupSettings:
    endpoint: str = setting(
        "", "URL of the S3-compatible object storage that every database is replicated to"
        " (https://s3.eu-west-1.amazonaws.com, https://<account>.r2.cloudflarestorage.com,"
        " http://127.0.0.1:8333). Empty: no replication."
    )
    bucket: str = setting("", "The bucket replicas go to. Required with endpoint.")
    region: str = setting("us-east-1", "The bucket's region.")
    prefix: str = setting(
        "", "Folder in the bucket for this site's replicas, e.g. \"gateway/prod\" (several"
        " sites can share a bucket)."
    )
    access_key_id_file: Path | None = setting(
        None, "File holding the storage's access key id. Required with endpoint."
    )
    secret_access_key_file: Path | None = setting(
        None, "File holding the storage's secret access key (mode 0600). Required with"
        " endpoint."
    )
    sync_interval_s: float = setting(
        1.0, "How often new transactions are sent to the bucket: at most this much of the"
        " latest writes is lost with the machine. Each sync is a write to the bucket (a"
        " cost on most providers).", check=_positive,
    )
    retention_h: float = setting(
        24.0, "How far back a point-in-time restore can go (hours); older replica files are"
        " removed.", check=_positive,
    )
    uid_offset: int = setting(
        10000, "When the gateway runs as root, the replication of a tenant runs as the"
        " tenant's uid plus this: a user of its own, in the tenant's group.", check=_positive,
    )


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything in gateway.toml."""

    domain: str = setting("", "The apex domain: tenants live at <name>.<domain>. Required.")
    listen: ListenSettings = section(ListenSettings)
    paths: PathSettings = section(PathSettings)
    proxy: ProxySettings = section(ProxySettings)
    limits: LimitsSettings = section(LimitsSettings)
    tenant_defaults: TenantSettings = section(TenantSettings)
    sandbox: SandboxSettings = section(SandboxSettings)
    supervisor: SupervisorSettings = section(SupervisorSettings)
    tls: TlsSettings = section(TlsSettings)
    log: LogSettings = section(LogSettings)
    auth: AuthSettings = section(AuthSettings)
    upload: UploadSettings = section(UploadSettings)
    smtp: SmtpSettings = section(SmtpSettings)
    metrics: MetricsSettings = section(MetricsSettings)
    backup: BackupSettings = section(BackupSettings)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One tenant: its settings and what its folder holds, as found when the config was read.

    Two TenantConfigs compare equal exactly when the running process would not change, so
    reload restarts a tenant when its config is unequal to the running one.
    """

    name: str
    directory: Path
    settings: TenantSettings
    databases: tuple[str, ...]
    metadata_file: str | None
    has_plugins: bool
    fingerprint: str

    @property
    def data_dir(self) -> Path:
        return self.directory / DATA_DIR


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySettings
    tenants: Mapping[str, TenantConfig]

    @property
    def domain(self) -> str:
        return self.gateway.domain

    @property
    def tls_enabled(self) -> bool:
        return self.gateway.tls.mode != "off"


def validate_tenant_name(name: str) -> str:
    """Return the name if a tenant may have it, else raise TenantNameError saying why."""
    if not _NAME_PATTERN.fullmatch(name):
        raise TenantNameError(
            f"{name!r} is not a valid tenant name: use 1 to 63 characters from a-z, 0-9 and '-'"
        )
    if name.startswith("-") or name.endswith("-"):
        raise TenantNameError(
            f"{name!r} is not a valid tenant name: it cannot start or end with '-'"
        )
    if name[2:4] == "--":
        raise TenantNameError(
            f"{name!r} is not a valid tenant name: '--' in the third and fourth places is"
            " reserved for internationalised names (xn--)"
        )
    if name in RESERVED_NAMES:
        raise TenantNameError(f"{name!r} is reserved; choose another tenant name")
    return name


def normalise_domain(domain: str) -> str:
    """Lower-case ASCII (IDNA) form of a domain, without a trailing dot."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"{domain!r} is not a valid domain name") from exc


# --- reading ---------------------------------------------------------------------------------


def load_config(path: Path, *, with_tenants: bool = True) -> Config:
    """Read gateway.toml and every tenant folder. Raises ConfigError on any problem.

    `with_tenants` False: gateway.toml alone (`gateway restore --all` on an empty machine)."""
    path = Path(path).absolute()
    table = _read_toml(path)
    settings = _build(GatewaySettings, table, file=path.name, prefix="")
    if not settings.domain:
        raise ConfigError(f"{path.name}: domain: required, e.g. domain = \"example.com\"")
    try:
        domain = normalise_domain(settings.domain)
    except ValueError as exc:
        raise ConfigError(f"{path.name}: domain: {exc}") from None
    paths = _resolve_paths(settings.paths, path.parent, file=path.name)
    if settings.sandbox.uid_min > settings.sandbox.uid_max:
        raise ConfigError(f"{path.name}: sandbox.uid_max: must not be below sandbox.uid_min")
    tls = _check_tls(settings.tls, domain, base=path.parent, file=path.name)
    smtp = _check_smtp(settings.smtp, base=path.parent, file=path.name)
    backup = _check_backup(settings.backup, base=path.parent, file=path.name)
    settings = dataclasses.replace(settings, domain=domain, paths=paths, tls=tls, smtp=smtp,
                                   backup=backup)
    tenants = load_tenants(paths.tenants_dir, settings.tenant_defaults) if with_tenants else {}
    return Config(path=path, gateway=settings, tenants=tenants)


def load_tenants(tenants_dir: Path, defaults: TenantSettings) -> dict[str, TenantConfig]:
    if not tenants_dir.is_dir():
        raise ConfigError(f"{tenants_dir}: the tenants folder does not exist")
    tenants: dict[str, TenantConfig] = {}
    problems: list[str] = []
    for entry in sorted(tenants_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            validate_tenant_name(entry.name)
            tenants[entry.name] = load_tenant(entry, defaults)
        except TenantNameError as exc:
            problems.append(f"{entry}: {exc}")
        except ConfigError as exc:
            problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    return tenants


def load_tenant(directory: Path, defaults: TenantSettings) -> TenantConfig:
    settings_file = directory / TENANT_SETTINGS_FILE
    table = _read_toml(settings_file) if settings_file.exists() else {}
    label = f"{directory.parent.name}/{directory.name}/{TENANT_SETTINGS_FILE}"
    settings = _build(TenantSettings, table, file=label, prefix="", base=defaults)
    metadata_file = next((m for m in METADATA_FILES if (directory / m).is_file()), None)
    plugins = directory / PLUGINS_DIR
    return TenantConfig(
        name=directory.name,
        directory=directory,
        settings=settings,
        databases=list_databases(directory / DATA_DIR),
        metadata_file=metadata_file,
        has_plugins=plugins.is_dir(),
        fingerprint=_fingerprint(directory, metadata_file, plugins),
    )


def tenant_settings_from_table(table: Mapping[str, Any], *, file: str) -> TenantSettings:
    """TenantSettings from a table of every key (as another worker sent them), with the checks
    a tenant.toml gets: ConfigError naming `file` and the key."""
    return typing.cast(TenantSettings, _build(TenantSettings, table, file=file, prefix=""))


def list_databases(data_dir: Path) -> tuple[str, ...]:
    """The SQLite files a tenant serves: top-level *.db, *.sqlite, *.sqlite3 in its data folder."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return ()
    return tuple(
        sorted(n for n in names if n.endswith(DATABASE_SUFFIXES) and not n.startswith("."))
    )


def _fingerprint(directory: Path, metadata_file: str | None, plugins: Path) -> str:
    """Hash of the operator-controlled files the tenant process reads at start."""
    digest = hashlib.sha256()
    files = [directory / metadata_file] if metadata_file else []
    if plugins.is_dir():
        files += sorted(p for p in plugins.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(directory)).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None


def _resolve_paths(paths: PathSettings, base: Path, *, file: str) -> PathSettings:
    resolved = {f.name: base / getattr(paths, f.name) for f in dataclasses.fields(paths)}
    run_dir = resolved["run_dir"]
    if len(str(run_dir)) + _SOCKET_SUFFIX_ROOM > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"{file}: paths.run_dir: {str(run_dir)!r} is too long for Unix socket paths"
            f" (keep it under {_MAX_SOCKET_PATH - _SOCKET_SUFFIX_ROOM} characters,"
            " e.g. /run/gateway)"
        )
    return PathSettings(**resolved)


def _check_tls(tls: TlsSettings, domain: str, *, base: Path, file: str) -> TlsSettings:
    """Cross-key rules of [tls]; file paths made absolute (relative to gateway.toml)."""

    def absolute(section: Any) -> Any:
        return dataclasses.replace(section, **{
            f.name: base / getattr(section, f.name) for f in dataclasses.fields(section)
            if isinstance(getattr(section, f.name), Path)
        })

    def value(dotted: str) -> Any:
        keys: Any = tls
        for part in dotted.split("."):
            keys = getattr(keys, part)
        return keys

    def require(when: str, *names: str) -> None:
        for name in names:
            if not value(name):
                raise ConfigError(f"{file}: tls.{name}: required when {when}")

    def together(first: str, second: str) -> None:
        if bool(value(first)) != bool(value(second)):
            raise ConfigError(f"{file}: tls.{first}, tls.{second}: set both or neither")

    tls = dataclasses.replace(
        absolute(tls), acme=absolute(tls.acme), rfc2136=absolute(tls.rfc2136),
        digitalocean=absolute(tls.digitalocean),
    )
    if tls.mode == "files":
        require('tls.mode is "files"', "cert_file", "key_file")
    if tls.mode != "acme":
        return tls
    require('tls.mode is "acme"', "acme.directory_url")
    together("acme.eab_kid", "acme.eab_hmac_key_file")
    if tls.acme.retry_initial_s > tls.acme.retry_max_s:
        raise ConfigError(f"{file}: tls.acme.retry_max_s: must not be below"
                          " tls.acme.retry_initial_s")
    provider = tls.dns.provider
    when = f'tls.dns.provider is "{provider}"'
    if provider == "rfc2136":
        require(when, "rfc2136.server")
        together("rfc2136.tsig_key_name", "rfc2136.tsig_secret_file")
    elif provider == "digitalocean":
        require(when, "digitalocean.token_file")
    else:
        require(when, "exec.command")
    try:
        zone = normalise_domain(tls.dns.zone or domain)
    except ValueError as exc:
        raise ConfigError(f"{file}: tls.dns.zone: {exc}") from None
    if domain != zone and not domain.endswith("." + zone):
        raise ConfigError(f"{file}: tls.dns.zone: the domain {domain} is not in the zone {zone}")
    for server in tls.dns.wait_servers:
        if parse_server(server) is None:
            raise ConfigError(f"{file}: tls.dns.wait_servers: {server!r} is not a host or"
                              " host:port")
    return dataclasses.replace(tls, dns=dataclasses.replace(tls.dns, zone=zone))


def _check_smtp(smtp: SmtpSettings, *, base: Path, file: str) -> SmtpSettings:
    if smtp.user and smtp.password_file is None:
        raise ConfigError(f"{file}: smtp.password_file: required when smtp.user is set")
    return dataclasses.replace(smtp, **{
        name: base / path for name in ("password_file", "ca_file")
        if (path := getattr(smtp, name)) is not None
    })


def _check_backup(backup: BackupSettings, *, base: Path, file: str) -> BackupSettings:
    """[backup]: with an endpoint, a bucket and both credential files (absolute paths)."""
    backup = dataclasses.replace(backup, **{
        name: base / getattr(backup, name) for name in ("access_key_id_file",
                                                         "secret_access_key_file")
        if getattr(backup, name) is not None
    })
    if not backup.endpoint:
        return backup
    if not backup.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{file}: backup.endpoint: expected an http:// or https:// URL,"
                          f" got {backup.endpoint!r}")
    for name in ("bucket", "access_key_id_file", "secret_access_key_file"):
        if not getattr(backup, name):
            raise ConfigError(f"{file}: backup.{name}: required when backup.endpoint is set")
    return dataclasses.replace(backup, prefix=backup.prefix.strip("/"))


def parse_server(server: str, default_port: int = 53) -> tuple[str, int] | None:
    """'ns1.example.com' / '192.0.2.1:5353' / '[2001:db8::1]:53' -> (host, port); None if not."""
    host, port = server, str(default_port)
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


# --- the schema machinery: dataclass fields -> checked values ---------------------------------


def _build(
    cls: type[Any], table: Mapping[str, Any], *, file: str, prefix: str, base: Any = None
) -> Any:
    """Build dataclass `cls` from a TOML table, starting from `base` (or the defaults)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [_unknown_key(key, fields, file=file, prefix=prefix)
                for key in table if key not in fields]
    values: dict[str, Any] = {}
    for name, f in fields.items():
        current = getattr(base, name) if base is not None else None
        if name not in table:
            if current is not None:
                values[name] = current
            continue
        try:
            values[name] = _build_value(cls, f, table[name], current, file=file, prefix=prefix)
        except ConfigError as exc:  # every problem is reported, not only the first
            problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    return cls(**values)


def _build_value(cls: type[Any], f: dataclasses.Field[Any], raw: Any, current: Any, *, file: str,
                 prefix: str) -> Any:
    where = f"{prefix}{f.name}"
    kind = typing.get_type_hints(cls)[f.name]
    if dataclasses.is_dataclass(kind):
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {where}: expected a table, got {_show(raw)}")
        return _build(
            typing.cast(type[Any], kind), raw, file=file, prefix=f"{where}.", base=current
        )
    value = _convert(kind, raw, file=file, where=where)
    if isinstance(value, dict) and isinstance(current, dict):
        value = {**current, **value}
    check = f.metadata.get("check")
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{file}: {where}: {problem}")
    return value


def _unknown_key(key: str, fields: Mapping[str, Any], *, file: str, prefix: str) -> str:
    known = ", ".join(sorted(fields))
    message = f"{file}: {prefix}{key}: unknown key (known keys: {known})"
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]}?" if close else message


def _convert(kind: Any, raw: Any, *, file: str, where: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        raise ConfigError(f"{file}: {where}: expected true or false, got {_show(raw)}")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise ConfigError(f"{file}: {where}: expected an integer, got {_show(raw)}")
    if kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        raise ConfigError(f"{file}: {where}: expected a number, got {_show(raw)}")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{file}: {where}: expected a string, got {_show(raw)}")
    if kind is Path:
        if isinstance(raw, str) and raw:
            return Path(raw)
        raise ConfigError(f"{file}: {where}: expected a path, got {_show(raw)}")
    if origin is Literal:
        choices = typing.get_args(kind)
        if raw in choices:
            return raw
        shown = ", ".join(f'"{c}"' for c in choices)
        raise ConfigError(f"{file}: {where}: expected one of {shown}, got {_show(raw)}")
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(raw, list):
            raise ConfigError(f"{file}: {where}: expected a list, got {_show(raw)}")
        return tuple(_convert(item_kind, item, file=file, where=f"{where}[{i}]")
                     for i, item in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {where}: expected a table, got {_show(raw)}")
        value_kind = typing.get_args(kind)[1]
        return {key: _convert_union(value_kind, item, file=file, where=f"{where}.{key}")
                for key, item in raw.items()}
    if origin in (typing.Union, types.UnionType):
        return _convert_union(kind, raw, file=file, where=where)
    raise TypeError(f"no converter for {kind!r}")  # a programming error in this module


def _convert_union(kind: Any, raw: Any, *, file: str, where: str) -> Any:
    # TOML has no null: an optional key is either absent (its default, None) or a value.
    options = tuple(o for o in typing.get_args(kind) or (kind,) if o is not type(None))
    for option in options:
        try:
            return _convert(option, raw, file=file, where=where)
        except ConfigError:
            continue
    names = " or ".join(_TYPE_NAMES.get(o, str(o)) for o in options)
    raise ConfigError(f"{file}: {where}: expected {names}, got {_show(raw)}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               Path: "a path"}


def _show(raw: Any) -> str:
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return "a list"
    return repr(raw)


def documented_keys(cls: type[Any] = GatewaySettings, prefix: str = "") -> list[tuple[str, str]]:
    """Every key with its help text, dotted: [("proxy.retry_budget_s", "How long ..."), ...]."""
    hints = typing.get_type_hints(cls)
    keys: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += documented_keys(typing.cast(type[Any], hints[f.name]), f"{prefix}{f.name}.")
        else:
            keys.append((f"{prefix}{f.name}", f.metadata["help"]))
    return keys

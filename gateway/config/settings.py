"""Every key of gateway.toml and tenant.toml, declared once, with its default, its help
text (README.md's reference is generated from it: `make docs`) and its check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .schema import check_non_negative, check_port, check_positive, section, setting


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = setting("0.0.0.0", "Address the HTTP and HTTPS listeners bind to.")
    http_port: int = setting(
        80, "Port for plain HTTP. With TLS on it only redirects to HTTPS.", check=check_port
    )
    https_port: int = setting(443, "Port for HTTPS (used when tls.mode is not off).",
                              check=check_port)
    public_port: int = setting(
        0, "The port browsers reach the gateway on, when a port mapping (docker's -p 8080:80)"
        " makes it another than the listening one; 0: the listening port (https_port with TLS,"
        " else http_port). Sign-in redirects name it.", check=check_port,
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
        5.0, "Seconds to wait for a tenant's socket to accept a connection.", check=check_positive
    )
    response_timeout_s: float = setting(
        60.0,
        "Seconds to wait for a tenant to start answering (status line and headers) before"
        " answering 504.",
        check=check_positive,
    )
    retry_budget_s: float = setting(
        10.0,
        "How long a request that could not reach its tenant is retried (with backoff) before"
        " answering 502. 0 disables retries.",
        check=check_non_negative,
    )
    replay_body_max_bytes: int = setting(
        1024 * 1024,
        "Request bodies up to this size are read whole before the request takes one of its"
        " tenant's slots (a client that sends slowly holds none), and can be replayed when the"
        " tenant could not have seen them. Larger bodies are streamed, never replayed, and"
        " such requests may hold at most half of the slots.",
        check=check_non_negative,
    )
    max_connections_per_tenant: int = setting(
        32,
        "Most requests in flight to one tenant process at once; more wait their turn, so one"
        " busy tenant cannot take every CPU.",
        check=check_positive,
    )
    drain_timeout_s: float = setting(
        30.0,
        "When a tenant process is replaced, how long its in-flight requests may take to finish"
        " before it is stopped anyway.",
        check=check_non_negative,
    )
    queue_timeout_s: float = setting(
        10.0,
        "How long a request waits for one of its tenant's max_connections_per_tenant slots"
        " before it is answered 503 with Retry-After.",
        check=check_positive,
    )
    response_buffer_bytes: int = setting(
        1024 * 1024,
        "Responses up to this size are read whole from the tenant before they are sent, so the"
        " tenant's slot and connection are free again however slowly the client reads. Larger"
        " ones are streamed.",
        check=check_non_negative,
    )
    response_buffer_total_bytes: int = setting(
        16 * 1024 * 1024,
        "Most response bytes held in such buffers at once, over all requests: the memory a"
        " crowd of slow readers can cost the gateway. Past it, responses are streamed.",
        check=check_non_negative,
    )


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """What one client connection may cost: timeouts and the request head's size. Set when
    the listeners start: a change applies at the next start or `gateway upgrade`."""

    head_timeout_s: float = setting(
        30.0,
        "Seconds a connection has to send a whole request head (request line and headers),"
        " counted from the connection or the first byte of the request; then it is closed.",
        check=check_positive,
    )
    keepalive_timeout_s: float = setting(
        15.0,
        "Seconds an idle keep-alive connection stays open waiting for its next request.",
        check=check_positive,
    )
    body_timeout_s: float = setting(
        30.0,
        "Longest pause while a request body arrives (between two reads, not for the whole"
        " body); then the request is abandoned (408) and its tenant slot freed.",
        check=check_positive,
    )
    send_timeout_s: float = setting(
        30.0,
        "Longest a client may go without accepting any of the response waiting for it; then"
        " the connection is closed and what was buffered for it is freed.",
        check=check_positive,
    )
    max_head_bytes: int = setting(
        32 * 1024,
        "Largest request head (request line and headers) accepted; a larger one is answered"
        " 431 before it is read whole.",
        check=check_positive,
    )


def _datasette_setting_check(settings: Mapping[str, Any]) -> str | None:
    from ..datasette_settings import unknown_setting_error

    return unknown_setting_error(settings)


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Per-tenant settings: `[tenant_defaults]` in gateway.toml, overridden by tenant.toml."""

    public: bool = setting(
        False, "Whether anyone may browse the tenant; otherwise only its members may."
    )
    title: str = setting("", "Shown on the gateway's pages; defaults to the tenant's name.")
    memory_mb: int = setting(
        1024, "Address-space limit of the tenant's Datasette process (RLIMIT_AS).",
        check=check_positive,
    )
    open_files: int = setting(
        1024, "Open file limit of the tenant's process (RLIMIT_NOFILE).", check=check_positive
    )
    processes: int = setting(
        64, "Process and thread limit of the tenant's user (RLIMIT_NPROC).", check=check_positive
    )
    start_timeout_s: float = setting(
        30.0, "Seconds a new tenant process has to pass its health check.", check=check_positive
    )
    stop_timeout_s: float = setting(
        5.0,
        "Seconds a stopping tenant process has to finish in-flight requests after SIGTERM"
        " before it is killed.",
        check=check_non_negative,
    )
    idle_stop_s: float = setting(
        0.0,
        "Seconds without a request after which the tenant's process is stopped (it sleeps);"
        " the next request starts it again. Uploads and requests in flight keep it awake."
        " 0: it never sleeps.",
        check=check_non_negative,
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
        20000, "First uid/gid given to tenants when the gateway runs as root.", check=check_positive
    )
    uid_max: int = setting(29999, "Last uid/gid given to tenants.", check=check_positive)
    spare_processes: int = setting(
        2,
        "Sandboxed Python processes with Datasette loaded, kept ready to be handed a tenant"
        " that starts or wakes (a start then costs ~0.04 s of CPU instead of ~0.27 s; see"
        " README, Sleeping tenants). Each serves one tenant only; while it waits, ~1 MB of"
        " memory of its own when forked (fork_spares), ~23 MB otherwise. Read at start. Root"
        " with isolation full or root-bwrap only; 0: every start is cold.",
        check=check_non_negative,
    )
    fork_spares: bool = setting(
        True,
        "Fork spares from one zygote, a sandboxed Python that imported Datasette once (a new"
        " spare then costs a fork, its own namespaces and mounts, and shares the zygote's"
        " memory); false: each spare is a bubblewrap of its own that imports Datasette itself"
        " (its own address-space layout and hash seed; see README, Sleeping tenants). Read at"
        " start.",
    )


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    restart_backoff_initial_s: float = setting(
        0.2, "Wait before restarting a crashed tenant; doubles on each crash.", check=check_positive
    )
    restart_backoff_max_s: float = setting(
        30.0, "Longest wait between restarts of a crashing tenant.", check=check_positive
    )
    crash_loop_restarts: int = setting(
        5,
        "A tenant that crashes this many times within crash_loop_window_s is marked failed and"
        " answers 503 for failed_cooldown_s, or until it is restarted or changed.",
        check=check_positive,
    )
    crash_loop_window_s: float = setting(
        60.0, "Window for counting crashes (see crash_loop_restarts).", check=check_positive
    )
    failed_cooldown_s: float = setting(
        300.0,
        "How long a failed tenant rests before it is started again by itself, with a fresh count"
        " of crashes. 0: it stays failed until it is restarted or changed.",
        check=check_non_negative,
    )
    max_awake_tenants: int = setting(
        0,
        "Most tenants that may sleep (idle_stop_s > 0) awake at once: a wake beyond it first"
        " puts to sleep the least recently used one with no request, upload or restore in"
        " flight (if all are busy the wake still happens). Tenants that never sleep neither"
        " count nor are put to sleep. Bounds what anonymous visitors can wake; see README,"
        " Sleeping tenants. 0: no cap.",
        check=check_non_negative,
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
        120.0, "How long the CA may take to validate and issue, per attempt.", check=check_positive
    )
    retry_initial_s: float = setting(
        60.0, "Wait after a failed issuance or renewal before trying again; doubles on each"
        " failure.", check=check_positive
    )
    retry_max_s: float = setting(
        3600.0, "Longest wait between attempts after failures.", check=check_positive
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
    ttl_s: int = setting(60, "TTL of the TXT records.", check=check_positive)
    wait_servers: tuple[str, ...] = setting(
        (),
        "Name servers (host or host:port) that must answer with the TXT values before the CA"
        " is asked to look. Default: the zone's authoritative servers (its NS records).",
    )
    wait_timeout_s: float = setting(
        300.0, "How long to wait for those servers to answer with the TXT values.",
        check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class Rfc2136Settings:
    server: str = setting("", "Host name or address of the name server that takes updates.")
    port: int = setting(53, "Its port.", check=check_port)
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
                               check=check_positive)


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
    acme: AcmeSettings = section(AcmeSettings)
    dns: DnsSettings = section(DnsSettings)
    rfc2136: Rfc2136Settings = section(Rfc2136Settings)
    digitalocean: DigitalOceanSettings = section(DigitalOceanSettings)
    exec: ExecSettings = section(ExecSettings)


@dataclass(frozen=True, slots=True)
class LogSettings:
    access_log: bool = setting(True, "Write one JSON line per request to stdout.")
    level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "Level of the gateway's own event log (JSON lines on stderr)."
    )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    session_idle_s: float = setting(
        7 * 86400.0, "A session nobody uses for this long ends (seconds).", check=check_positive
    )
    session_max_s: float = setting(
        30 * 86400.0, "A session ends this long after sign-in, used or not (seconds).",
        check=check_positive,
    )
    session_cache_s: float = setting(
        5.0,
        "How long the gateway trusts what it read about a session or API token before reading"
        " it again. Changes made with the CLI (removed users, memberships, revoked tokens), and"
        " sign-outs served by another gateway process, take effect within this time.",
        check=check_positive,
    )
    invite_ttl_s: float = setting(
        7 * 86400.0, "How long a `gateway user invite` link stays valid (seconds).",
        check=check_positive,
    )
    password_min_length: int = setting(
        10, "Shortest password accepted for a new account or a new password.", check=check_positive
    )
    password_time_cost: int = setting(
        3, "argon2id iterations. Stored hashes are upgraded at the next sign-in when the three"
        " password_* parameters change.", check=check_positive
    )
    password_memory_kib: int = setting(
        65536,
        "argon2id memory per hash, in KiB (64 MiB takes about 0.1 s per sign-in on one core).",
        check=check_positive,
    )
    password_parallelism: int = setting(4, "argon2id lanes.", check=check_positive)
    throttle_account_attempts: int = setting(
        5,
        "Failed sign-ins allowed for one email address before each further attempt must wait"
        " (the wait doubles with every failure).",
        check=check_positive,
    )
    throttle_address_attempts: int = setting(
        20,
        "Failed sign-ins allowed from one client address (IPv6: one /64) before each further"
        " attempt must wait.",
        check=check_positive,
    )
    throttle_backoff_initial_s: float = setting(
        1.0, "The first wait once the free attempts are used up.", check=check_positive
    )
    throttle_backoff_max_s: float = setting(
        900.0, "The longest wait between two sign-in attempts.", check=check_positive
    )
    throttle_window_s: float = setting(
        3600.0, "Failed attempts are forgotten after this long without another failure.",
        check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class UploadSettings:
    max_file_mb: int = setting(
        1024, "Largest CSV file members may upload at /-/upload; a larger one is refused (413).",
        check=check_positive,
    )
    idle_timeout_s: float = setting(
        60.0, "An upload that sends nothing for this long is abandoned; nothing is imported.",
        check=check_positive,
    )
    max_duration_s: float = setting(
        3600.0, "An upload still arriving or being read this long after it started is stopped"
        " (408) and nothing is imported: a client that sends a byte now and then never ends.",
        check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = setting(
        "", "SMTP server that sends invitations and password reset links. Empty: no email; the"
        " Team page shows invitation links to copy, and the sign-in page says to ask the"
        " operator for a new password."
    )
    port: int = setting(587, "Its port (587 for starttls, 465 for tls, 25 for none).",
                        check=check_port)
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
                               check=check_positive)
    reset_ttl_s: float = setting(
        3600.0, "How long a password reset link stays valid (seconds).", check=check_positive
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
        " cost on most providers).", check=check_positive,
    )
    monitor_interval_s: float = setting(
        0.5, "How often Litestream looks for new transactions in each database (its"
        " monitor-interval): a write waits up to this, then up to sync_interval_s, before it"
        " is sent. Litestream's default, 1, costs half the CPU when idle (~0.5 ms a second"
        " per database) and doubles the worst case.", check=check_positive,
    )
    retention_h: float = setting(
        24.0, "How far back a point-in-time restore can go (hours); older replica files are"
        " removed.", check=check_positive,
    )
    uid_offset: int = setting(
        10000, "When the gateway runs as root, the replication of a tenant runs as the"
        " tenant's uid plus this: a user of its own, in the tenant's group.", check=check_positive,
    )


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    etcd_endpoints: tuple[str, ...] = setting(
        (), "URLs of the etcd members (http://10.0.0.1:2379, ...). Empty: no cluster, one"
        " machine as always. With them, this node joins the cluster named by these members."
    )
    node: str = setting("", "This node's name in the cluster, unique. Required with"
                        " etcd_endpoints.")
    role: Literal["edge", "host", "both"] = setting(
        "both", "What this node does: edge (public listeners, routing to hosts), host (runs"
        " the tenants placed on it), or both."
    )
    capacity: int = setting(
        50, "How many tenants this host runs at most; the leader places within it.",
        check=check_positive,
    )
    advertise: str = setting(
        "", "The address (IP, no port) edges reach this host's tenants at, over mutual TLS;"
        " each tenant gets a port of its own there. Required for a host."
    )
    tls_dir: Path | None = setting(
        None, "Folder with ca.pem, node.pem, node.key and secret.key (from `gateway cluster"
        " cert NODE`): edges and hosts authenticate each other with them; secret.key seals"
        " the ACME certificate's key in etcd. Default: <state_dir>/cluster."
    )
    lease_ttl_s: int = setting(
        5, "A node is alive while its etcd lease is: it is refreshed every third of this, and"
        " a dead host's tenants are re-placed this long after it stopped.",
        check=check_positive,
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
    cluster: ClusterSettings = section(ClusterSettings)


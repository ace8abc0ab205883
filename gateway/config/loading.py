"""Reading gateway.toml and tenants/ into a Config: files, paths, the checks that span
several keys, and the tenant folders (names, databases, fingerprints)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..database_files import DATABASE_SUFFIXES
from ..errors import ConfigError, TenantNameError
from .schema import build
from .settings import (
    BackupSettings,
    ClusterSettings,
    GatewaySettings,
    PathSettings,
    SmtpSettings,
    TenantSettings,
    TlsSettings,
)

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


def load_config(path: Path, *, with_tenants: bool = True) -> Config:
    """Read gateway.toml and every tenant folder. Raises ConfigError on any problem.

    `with_tenants` False: gateway.toml alone (`gateway restore --all` on an empty machine)."""
    path = Path(path).absolute()
    table = _read_toml(path)
    settings = build(GatewaySettings, table, file=path.name, prefix="")
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
    cluster = _check_cluster(settings.cluster, paths.state_dir, base=path.parent, file=path.name)
    settings = dataclasses.replace(settings, domain=domain, paths=paths, tls=tls, smtp=smtp,
                                   backup=backup, cluster=cluster)
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
    settings = build(TenantSettings, table, file=label, prefix="", base=defaults)
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
    return typing.cast(TenantSettings, build(TenantSettings, table, file=file, prefix=""))


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


def _check_cluster(cluster: ClusterSettings, state_dir: Path, *, base: Path, file: str
                   ) -> ClusterSettings:
    """[cluster]: with endpoints, a node name (and an advertised address for a host)."""
    tls_dir = base / cluster.tls_dir if cluster.tls_dir is not None else state_dir / "cluster"
    cluster = dataclasses.replace(cluster, tls_dir=tls_dir)
    if not cluster.etcd_endpoints:
        return cluster
    for endpoint in cluster.etcd_endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{file}: cluster.etcd_endpoints: expected http:// or https://"
                              f" URLs, got {endpoint!r}")
    if not _NAME_PATTERN.fullmatch(cluster.node):
        raise ConfigError(f"{file}: cluster.node: required with cluster.etcd_endpoints: 1 to 63"
                          " characters from a-z, 0-9 and '-'")
    if cluster.role != "edge" and not cluster.advertise:
        raise ConfigError(f"{file}: cluster.advertise: required for a host (role"
                          f" {cluster.role!r}): the IP edges reach it at")
    return cluster


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


"""gateway.toml and tenants/ -> frozen dataclasses, strictly.

Every key is declared once, in settings.py, with its default and its help text; README.md
documents each one (tests/test_docs.py checks). The TOML is parsed once: everything downstream
gets dataclasses. Unknown keys, wrong types and bad values raise ConfigError naming the file
and the key:

    gateway.toml: proxy.retry_budget_s: expected a number, got "lots"

    settings.py   every key, declared once (default, help, check)
    schema.py     the machinery: TOML tables -> checked dataclasses
    loading.py    files and folders -> Config
"""

from __future__ import annotations

from ..database_files import DATABASE_SUFFIXES
from .loading import (
    DATA_DIR,
    METADATA_FILES,
    PLUGINS_DIR,
    RESERVED_NAMES,
    TENANT_SETTINGS_FILE,
    Config,
    TenantConfig,
    list_databases,
    load_config,
    load_tenant,
    load_tenants,
    normalise_domain,
    parse_server,
    tenant_settings_from_table,
    validate_tenant_name,
)
from .schema import (
    build,
    check_non_negative,
    check_port,
    check_positive,
    documented_keys,
    section,
    setting,
)
from .settings import (
    AcmeSettings,
    AuthSettings,
    BackupSettings,
    ClusterSettings,
    DigitalOceanSettings,
    DnsSettings,
    ExecSettings,
    GatewaySettings,
    LimitsSettings,
    ListenSettings,
    LogSettings,
    MetricsSettings,
    PathSettings,
    ProxySettings,
    Rfc2136Settings,
    SandboxSettings,
    SmtpSettings,
    SupervisorSettings,
    TenantSettings,
    TlsSettings,
    UploadSettings,
    parse_listen,
)

__all__ = [
    "DATABASE_SUFFIXES",
    "DATA_DIR",
    "METADATA_FILES",
    "PLUGINS_DIR",
    "RESERVED_NAMES",
    "TENANT_SETTINGS_FILE",
    "AcmeSettings",
    "AuthSettings",
    "BackupSettings",
    "ClusterSettings",
    "Config",
    "DigitalOceanSettings",
    "DnsSettings",
    "ExecSettings",
    "GatewaySettings",
    "LimitsSettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "PathSettings",
    "ProxySettings",
    "Rfc2136Settings",
    "SandboxSettings",
    "SmtpSettings",
    "SupervisorSettings",
    "TenantConfig",
    "TenantSettings",
    "TlsSettings",
    "UploadSettings",
    "build",
    "check_non_negative",
    "check_port",
    "check_positive",
    "documented_keys",
    "list_databases",
    "load_config",
    "load_tenant",
    "load_tenants",
    "normalise_domain",
    "parse_listen",
    "parse_server",
    "section",
    "setting",
    "tenant_settings_from_table",
    "validate_tenant_name",
]

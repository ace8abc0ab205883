"""gateway.toml and tenants/ parsing: strict, with error messages that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config, validate_tenant_name
from gateway.datasette_settings import KNOWN_SETTINGS
from gateway.errors import ConfigError, TenantNameError


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tenants").mkdir(exist_ok=True)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'domain = "Example.COM."\n'))
    assert config.domain == "example.com"
    assert config.gateway.listen.http_port == 80
    assert config.gateway.proxy.retry_budget_s == 10.0
    assert config.gateway.paths.tenants_dir == tmp_path / "tenants"
    assert config.tenants == {}


def test_the_repository_example_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "gateway.toml")
    assert config.domain == "example.com"


def test_idna_domain_is_normalised(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'domain = "bücher.de"\n')).domain == "xn--bcher-kva.de"


@pytest.mark.parametrize(("text", "message"), [
    ("", "gateway.toml: domain: required, e.g. domain = \"example.com\""),
    ('domain = "x.com"\nlisten = 3\n', "gateway.toml: listen: expected a table, got 3"),
    ('domain = "x.com"\n[proxy]\nretry_budget_s = "lots"\n',
     'gateway.toml: proxy.retry_budget_s: expected a number, got "lots"'),
    ('domain = "x.com"\n[listen]\nhttp_port = 70000\n',
     "gateway.toml: listen.http_port: must be a port number between 0 and 65535"),
    ('domain = "x.com"\n[listen]\nhttp_port = true\n',
     "gateway.toml: listen.http_port: expected an integer, got true"),
    ('domain = "x.com"\n[sandbox]\nisolation = "maybe"\n',
     'gateway.toml: sandbox.isolation: expected one of "auto", "required", "off", got "maybe"'),
    ('domain = "x.com"\n[proxy]\nconnect_timeout_s = 0\n',
     "gateway.toml: proxy.connect_timeout_s: must be greater than 0"),
    ('domain = "x.com"\n[tenant_defaults.datasette]\nsql_time_limit = 5\n',
     "gateway.toml: tenant_defaults.datasette: sql_time_limit: not a Datasette setting"),
    ('domain = "x.com"\n[tenant_defaults.datasette]\nforce_https_urls = true\n',
     "gateway.toml: tenant_defaults.datasette: force_https_urls: set by the gateway, not per"
     " tenant"),
    ('domain = "x.com"\n[sandbox]\nuid_min = 5\nuid_max = 4\n',
     "gateway.toml: sandbox.uid_max: must not be below sandbox.uid_min"),
    ('domain = "x.com"\ndomian = "typo"\n', "gateway.toml: domian: unknown key (known keys:"),
    ('domain = "x.com"\n[proxy]\nretry_budget = 1\n',
     "gateway.toml: proxy.retry_budget: unknown key (known keys: connect_timeout_s,"),
    ('domain = "x.com"\n[proxy\n', "gateway.toml: not valid TOML:"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    assert error_of(write(tmp_path, text)).startswith(message)


def test_long_run_dir_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'domain = "x.com"\n[paths]\nrun_dir = "/{"r" * 100}"\n')
    assert "paths.run_dir:" in error_of(path)
    assert "too long for Unix socket paths" in error_of(path)


def test_tenants_are_read_with_defaults_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain = "x.com"\n[tenant_defaults]\nmemory_mb = 700\n'
                           '[tenant_defaults.datasette]\nsql_time_limit_ms = 900\n'
                           'max_returned_rows = 50\n')
    alice = tmp_path / "tenants" / "alice"
    (alice / "data").mkdir(parents=True)
    (alice / "data" / "b.db").touch()
    (alice / "data" / "a.sqlite").touch()
    (alice / "data" / "notes.txt").touch()
    (alice / "tenant.toml").write_text("public = true\n[datasette]\nsql_time_limit_ms = 2000\n")
    (tmp_path / "tenants" / "bob").mkdir()
    (tmp_path / "tenants" / ".removed").mkdir()
    (tmp_path / "tenants" / "README.md").touch()
    config = load_config(path)
    assert sorted(config.tenants) == ["alice", "bob"]
    settings = config.tenants["alice"].settings
    assert settings.public is True
    assert settings.memory_mb == 700
    assert settings.datasette == {"sql_time_limit_ms": 2000, "max_returned_rows": 50}
    assert config.tenants["alice"].databases == ("a.sqlite", "b.db")
    assert config.tenants["bob"].settings.public is False
    assert config.tenants["bob"].databases == ()


def test_tenant_errors_name_the_tenant_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain = "x.com"\n')
    (tmp_path / "tenants" / "alice").mkdir()
    (tmp_path / "tenants" / "alice" / "tenant.toml").write_text("memory_mb = 'lots'\n")
    assert error_of(path) == (
        'tenants/alice/tenant.toml: memory_mb: expected an integer, got "lots"'
    )


def test_invalid_tenant_folder_name_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain = "x.com"\n')
    (tmp_path / "tenants" / "Carol").mkdir()
    assert "'Carol' is not a valid tenant name" in error_of(path)


def test_changed_files_change_the_tenant_config(tmp_path: Path) -> None:
    path = write(tmp_path, 'domain = "x.com"\n')
    alice = tmp_path / "tenants" / "alice"
    (alice / "plugins").mkdir(parents=True)
    before = load_config(path).tenants["alice"]
    assert before == load_config(path).tenants["alice"]
    (alice / "plugins" / "p.py").write_text("x = 1\n")
    assert load_config(path).tenants["alice"] != before


@pytest.mark.parametrize("name", ["alice", "a", "team-7", "x" * 63, "0day"])
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "use 1 to 63 characters from a-z, 0-9 and '-'"),
    ("Alice", "use 1 to 63 characters"),
    ("a_b", "use 1 to 63 characters"),
    ("x" * 64, "use 1 to 63 characters"),
    ("a.b", "use 1 to 63 characters"),
    ("-a", "it cannot start or end with '-'"),
    ("a-", "it cannot start or end with '-'"),
    ("xn--a", "reserved for internationalised names"),
    ("www", "'www' is reserved"),
    ("admin", "'admin' is reserved"),
    ("api", "'api' is reserved"),
])
def test_invalid_tenant_names(name: str, why: str) -> None:
    with pytest.raises(TenantNameError) as info:
        validate_tenant_name(name)
    assert why in str(info.value)


def test_known_datasette_settings_match_the_installed_datasette() -> None:
    from datasette.app import SETTINGS

    installed = {setting.name: type(setting.default) for setting in SETTINGS}
    assert dict(KNOWN_SETTINGS) == installed

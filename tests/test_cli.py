"""The `gateway` command: help everywhere, clear errors, tenant folders."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gateway.cli import cli


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """Every command and group of the CLI, found by walking it (new ones are covered too)."""
    found = [list(prefix)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += all_commands(command, (*prefix, name))
        else:
            found.append([*prefix, name])
    return found


COMMANDS = all_commands(cli)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="gateway")
    return result.exit_code, result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gateway")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(command: list[str], flag: str) -> None:
    code, output = run(*command, flag)
    assert code == 0
    assert "Usage: gateway" in output


def config(tmp_path: Path, text: str = 'domain = "gw.test"\n') -> str:
    (tmp_path / "tenants").mkdir(exist_ok=True)
    (tmp_path / "gateway.toml").write_text(text + '[paths]\nrun_dir = "run"\n')
    return str(tmp_path / "gateway.toml")


def test_check_config(tmp_path: Path) -> None:
    code, output = run("--config", config(tmp_path), "check-config")
    assert (code, output) == (0, f"OK: {tmp_path}/gateway.toml (domain gw.test, 0 tenants)\n")
    code, output = run("--config", config(tmp_path, 'domain = "x"\nport = 1\n'), "check-config")
    assert code == 1
    assert output.startswith("Error: gateway.toml: port: unknown key")


def test_missing_config_file(tmp_path: Path) -> None:
    code, output = run("--config", str(tmp_path / "nope.toml"), "check-config")
    assert code == 1
    assert output == f"Error: {tmp_path}/nope.toml: file not found\n"


def test_tenant_add_creates_the_folder(tmp_path: Path) -> None:
    path = config(tmp_path)
    code, output = run("--config", path, "tenant", "add", "carol")
    assert code == 0
    assert "gateway reload" in output
    assert (tmp_path / "tenants" / "carol" / "tenant.toml").read_text().startswith("# Settings")
    assert (tmp_path / "tenants" / "carol" / "data").is_dir()
    code, output = run("--config", path, "tenant", "list", "--json")
    assert '"name": "carol"' in output and '"state": "not running"' in output
    code, output = run("--config", path, "check-config")
    assert code == 0 and "1 tenants" in output


@pytest.mark.parametrize(("name", "message"), [
    ("Carol", "Error: 'Carol' is not a valid tenant name: use 1 to 63 characters from a-z, 0-9"
              " and '-'\n"),
    ("www", "Error: 'www' is reserved; choose another tenant name\n"),
    ("-x", "Error: '-x' is not a valid tenant name: it cannot start or end with '-'\n"),
])
def test_tenant_add_refuses_bad_names(tmp_path: Path, name: str, message: str) -> None:
    code, output = run("--config", config(tmp_path), "tenant", "add", "--", name)
    assert (code, output) == (1, message)
    assert list((tmp_path / "tenants").iterdir()) == []


def test_tenant_add_refuses_an_existing_tenant(tmp_path: Path) -> None:
    path = config(tmp_path)
    run("--config", path, "tenant", "add", "carol")
    code, output = run("--config", path, "tenant", "add", "carol")
    assert code == 1
    assert "tenant 'carol' already exists" in output


def test_tenant_remove_keeps_the_data(tmp_path: Path) -> None:
    path = config(tmp_path)
    run("--config", path, "tenant", "add", "carol")
    (tmp_path / "tenants" / "carol" / "data" / "precious.db").write_text("x")
    code, output = run("--config", path, "tenant", "remove", "carol")
    assert code == 0
    (moved,) = (tmp_path / "tenants" / ".removed").iterdir()
    assert (moved / "data" / "precious.db").read_text() == "x"
    code, output = run("--config", path, "tenant", "remove", "carol")
    assert code == 1 and "no tenant 'carol'" in output


@pytest.mark.parametrize("command", [["reload"], ["status"], ["tenant", "restart", "alice"],
                                     ["cert", "status"], ["cert", "renew"]])
def test_commands_needing_a_gateway_say_none_is_running(tmp_path: Path, command: list[str]) -> None:
    code, output = run("--config", config(tmp_path), *command)
    assert code == 1
    assert output.startswith(f"Error: no gateway is running with {tmp_path}/gateway.toml")


def test_check_config_reports_every_problem_with_a_suggestion(tmp_path: Path) -> None:
    path = config(tmp_path, 'domain = "x"\nport = 1\n[proxy]\nretry_budget = 1\n'
                            'connect_timeout_s = "soon"\n')
    code, output = run("--config", path, "check-config")
    assert code == 1
    first, second, third = output.splitlines()
    assert first.startswith("Error: gateway.toml: port: unknown key (known keys: auth, ")
    assert ", domain, " in first
    assert first.endswith(")")  # nothing close to "port": no suggestion
    assert second.startswith(
        "Error: gateway.toml: proxy.retry_budget: unknown key (known keys: connect_timeout_s,")
    assert second.endswith(" retry_budget_s); did you mean retry_budget_s?")
    assert third == 'Error: gateway.toml: proxy.connect_timeout_s: expected a number, got "soon"'



@pytest.mark.parametrize("command", ["add", "password"])
def test_password_without_a_terminal_says_to_use_stdin(tmp_path: Path, command: str) -> None:
    code, output = run("--config", config(tmp_path), "user", command, "ann@example.com")
    assert code == 1
    assert output == (
        "Error: no terminal to ask for the password on: pipe it in with --password-stdin, e.g."
        f' echo "$PASSWORD" | gateway user {command} EMAIL --password-stdin\n'
    )

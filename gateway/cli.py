"""The `gateway` command. Thin: parse, call the package, print. The only place that exits."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import control, health, tenant_files
from .config import Config, load_config
from .errors import GatewayError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"]}


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)


def _config(ctx: click.Context) -> Config:
    try:
        return load_config(ctx.obj["config_path"])
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None


def _call(config: Config, method: str, path: str, **kwargs: Any) -> Any:
    """Ask the running gateway through its control socket."""
    try:
        return control.call(config, method, path, **kwargs)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text(data))


@click.group(context_settings=CONTEXT)
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=Path("gateway.toml"),
    show_default=True, help="The gateway's configuration file.",
)
@click.version_option(package_name="gateway")
@click.pass_context
def cli(ctx: click.Context, config_path: Path) -> None:
    """The edge of a multi-tenant Datasette host.

    \b
    Example:
        gateway --config gateway.toml serve
    """
    ctx.obj = {"config_path": config_path}


@cli.command(context_settings=CONTEXT)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve every tenant until SIGTERM or Ctrl-C (SIGHUP reloads, SIGUSR2 upgrades).

    \b
    Example:
        gateway --config gateway.toml serve
    """
    from .master import serve as run

    try:
        code = run(ctx.obj["config_path"])
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.exit(code)


@cli.command(hidden=True, context_settings=CONTEXT)
@click.option("--master-fd", type=int, required=True)
@click.option("--master-pid", type=int, required=True)
@click.option("--listen-fd", "listen_fds", multiple=True, required=True, help="NAME=FD")
@click.option("--handover-fd", type=int)
@click.pass_context
def worker(ctx: click.Context, master_fd: int, master_pid: int, listen_fds: tuple[str, ...],
           handover_fd: int | None) -> None:
    """The gateway's worker process; `gateway serve` starts it (never run it by hand)."""
    from .server import run_worker

    try:
        run_worker(
            ctx.obj["config_path"],
            master_fd=master_fd,
            master_pid=master_pid,
            listen_fds={n: int(fd) for n, _, fd in (s.partition("=") for s in listen_fds)},
            handover_fd=handover_fd,
        )
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command(context_settings=CONTEXT)
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Replace the running gateway with the code now installed, losing no request.

    A new worker starts, inherits the listening sockets, adopts the running tenants and starts
    serving; then the old one stops accepting, drains and exits. Same as SIGUSR2 to
    `gateway serve`.

    \b
    Example:
        pip install -U ./gateway && gateway upgrade
    """
    config = _config(ctx)
    before = _call(config, "GET", "/status")["worker_pid"]
    _call(config, "POST", "/upgrade", timeout=180)
    after = _call(config, "GET", "/status")["worker_pid"]
    click.echo(f"Upgraded: worker {before} replaced by {after}.")


@cli.command("check-config", context_settings=CONTEXT)
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Read gateway.toml and tenants/ and report the first problem (exit 1), or OK.

    \b
    Example:
        gateway --config gateway.toml check-config
    """
    config = _config(ctx)
    click.echo(f"OK: {config.path} (domain {config.domain}, {len(config.tenants)} tenants)")


@cli.command(context_settings=CONTEXT)
@json_option
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Apply changes to gateway.toml and tenants/ to the running gateway (like SIGHUP).

    Only the difference is applied: added tenants start, removed ones stop, changed ones are
    replaced without losing a request. An invalid config is reported and nothing changes.

    \b
    Example:
        gateway reload
    """
    plan = _call(_config(ctx), "POST", "/reload")

    def text(plan: dict[str, list[str]]) -> str:
        lines = [f"{key}: {', '.join(names) or '-'}" for key, names in plan.items()
                 if key != "unchanged"]
        return "\n".join(lines)

    _print(plan, as_json, text)


@cli.command(context_settings=CONTEXT)
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the running gateway's tenants and isolation.

    \b
    Example:
        gateway status --json
    """
    _print(_call(_config(ctx), "GET", "/status"), as_json, _status_text)


def _status_text(status: dict[str, Any]) -> str:
    isolation = status["isolation"]
    lines = [
        f"domain     {status['domain']}",
        f"tls        {status['tls']}",
        f"isolation  {isolation['level']}: {', '.join(isolation['protections'])}",
    ]
    if isolation["missing"]:
        lines.append(f"           not available: {', '.join(isolation['missing'])}"
                     f" ({isolation['reason']})")
    lines.append("")
    lines.append(f"{'TENANT':<20} {'STATE':<11} {'PID':>7} {'GEN':>5} {'RESTARTS':>8}  DATABASES")
    for tenant in status["tenants"]:
        lines.append(
            f"{tenant['name']:<20} {tenant['state']:<11} {tenant['pid'] or '-':>7}"
            f" {tenant['generation'] or '-':>5} {tenant['restarts']:>8}"
            f"  {', '.join(tenant['databases']) or '-'}"
        )
        if tenant["failure"]:
            lines.append(f"{'':<20} {tenant['failure']}")
    return "\n".join(lines)


@cli.command("health", context_settings=CONTEXT)
@json_option
@click.pass_context
def health_command(ctx: click.Context, as_json: bool) -> None:
    """Ask the running gateway's HTTP listener for /-/health; exit 1 unless it answers 200.

    Docker's HEALTHCHECK runs this.

    \b
    Example:
        gateway health
    """
    try:
        answer = health.check_health(_config(ctx))
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    states = answer["tenants"]
    running = sum(1 for state in states.values() if state == "running")
    _print(answer, as_json, lambda _: f"healthy: {running} of {len(states)} tenants running")


@cli.group(context_settings=CONTEXT)
def tenant() -> None:
    """Add, list, remove and restart tenants."""


@tenant.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.option("--public", is_flag=True, help="Anyone may browse it (default: members only).")
@click.pass_context
def tenant_add(ctx: click.Context, name: str, public: bool) -> None:
    """Create tenants/NAME; run `gateway reload` to start it.

    \b
    Example:
        gateway tenant add carol && gateway reload
    """
    config = _config(ctx)
    try:
        directory = tenant_files.create_tenant(config.gateway.paths.tenants_dir, name,
                                               public=public)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created {directory}. Put SQLite files in {directory / 'data'} and run"
               " `gateway reload` (or send SIGHUP) to start it.")


@tenant.command("list", context_settings=CONTEXT)
@json_option
@click.pass_context
def tenant_list(ctx: click.Context, as_json: bool) -> None:
    """List the tenants in tenants/ (with their state when the gateway is running).

    \b
    Example:
        gateway tenant list
    """
    config = _config(ctx)
    states: dict[str, str] = {}
    with contextlib.suppress(GatewayError):  # not running: list what is on disk
        running = control.call(config, "GET", "/status")["tenants"]
        states = {t["name"]: t["state"] for t in running}
    rows = [
        {"name": name, "public": t.settings.public, "databases": list(t.databases),
         "state": states.get(name, "not running")}
        for name, t in config.tenants.items()
    ]
    _print(rows, as_json, lambda rows: "\n".join(
        f"{r['name']:<20} {'public' if r['public'] else 'private':<8} {r['state']:<12}"
        f" {', '.join(r['databases']) or '-'}" for r in rows) or "no tenants")


@tenant.command("remove", context_settings=CONTEXT)
@click.argument("name")
@click.pass_context
def tenant_remove(ctx: click.Context, name: str) -> None:
    """Move tenants/NAME aside (to tenants/.removed/); run `gateway reload` to stop it.

    Nothing is deleted: the folder, with its databases, is kept under tenants/.removed/.

    \b
    Example:
        gateway tenant remove carol && gateway reload
    """
    config = _config(ctx)
    try:
        moved = tenant_files.remove_tenant(config.gateway.paths.tenants_dir, name)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Moved to {moved}. Run `gateway reload` (or send SIGHUP) to stop it.")


@tenant.command("restart", context_settings=CONTEXT)
@click.argument("name")
@click.pass_context
def tenant_restart(ctx: click.Context, name: str) -> None:
    """Replace NAME's process without losing a request (start new, switch, drain old).

    \b
    Example:
        gateway tenant restart alice
    """
    _call(_config(ctx), "POST", f"/tenants/{name}/restart")
    click.echo(f"Restarted {name}.")


if __name__ == "__main__":
    cli()

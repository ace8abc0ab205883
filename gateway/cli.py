"""The `gateway` command. Thin: parse, call the package, print. The only place that exits."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import tenant_files
from .config import Config, load_config
from .errors import GatewayError

if TYPE_CHECKING:
    from .auth.accounts import Accounts

# Commands import what they use when they run: `gateway serve` (the master process, which stays
# up for as long as the gateway) then holds neither httpx and Starlette (the control socket's
# client) nor the accounts code: 34 MB less resident memory (bench/proxy).

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"]}


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)


def _config(ctx: click.Context) -> Config:
    return load_config(ctx.obj["config_path"])


def _call(config: Config, method: str, path: str, **kwargs: Any) -> Any:
    """Ask the running gateway, over its control socket."""
    from . import control

    return control.call(config, method, path, **kwargs)


def _print(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text(data))


class GatewayGroup(click.Group):
    """Every GatewayError, from any command, becomes one `Error: …` line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GatewayError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=GatewayGroup, context_settings=CONTEXT)
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


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve every tenant until SIGTERM or Ctrl-C (SIGHUP reloads, SIGUSR2 upgrades).

    \b
    Example:
        gateway --config gateway.toml serve
    """
    from .master import serve as run

    _restore_new_machine(ctx.obj["config_path"])
    code = run(ctx.obj["config_path"])
    ctx.exit(code)


def _restore_new_machine(config_path: Path) -> None:
    """With [backup] set and no tenant and no state yet (a new machine, a container with empty
    volumes), the site is first restored from the bucket: "new machine, same site"."""
    config = load_config(config_path, with_tenants=False)
    if not config.gateway.backup.endpoint:
        return
    from .backup import restore

    if not restore.is_empty_site(config):
        return
    paths = config.gateway.paths
    done = restore.restore_site(config, paths.tenants_dir, paths.state_dir)
    if done is not None:  # else the bucket is empty too: a first start
        click.echo(json.dumps({"event": "backup_site_restored", **done}), err=True)


@cli.command(hidden=True)
@click.option("--master-fd", type=int, required=True)
@click.option("--master-pid", type=int, required=True)
@click.option("--listen-fd", "listen_fds", multiple=True, required=True, help="NAME=FD")
@click.option("--handover-fd", type=int)
@click.pass_context
def worker(ctx: click.Context, master_fd: int, master_pid: int, listen_fds: tuple[str, ...],
           handover_fd: int | None) -> None:
    """The gateway's worker process; `gateway serve` starts it (never run it by hand)."""
    from .server import run_worker

    run_worker(
        ctx.obj["config_path"],
        master_fd=master_fd,
        master_pid=master_pid,
        listen_fds={n: int(fd) for n, _, fd in (s.partition("=") for s in listen_fds)},
        handover_fd=handover_fd,
    )


@cli.command()
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
    result = _call(_config(ctx), "POST", "/upgrade", timeout=180)["result"]
    click.echo(f"Upgraded: worker {result['old_worker']} replaced by {result['new_worker']}.")


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Check gateway.toml and tenants/ and report every problem (exit 1), or OK.

    Each tenant's tenant.toml, its metadata file (parses, and has Datasette's shape) and its
    plugins (import without error, in the tenant's sandbox) are checked too.

    \b
    Example:
        gateway --config gateway.toml check-config
    """
    from .config_check import check_config

    config, problems = check_config(ctx.obj["config_path"])
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    if config is None or problems:
        ctx.exit(1)
    click.echo(f"OK: {config.path} (domain {config.domain}, {len(config.tenants)} tenants)")


@cli.command()
@click.option("--cluster", "every_node", is_flag=True,
              help="Reload every node of the cluster (through etcd), the leader last.")
@json_option
@click.pass_context
def reload(ctx: click.Context, every_node: bool, as_json: bool) -> None:
    """Apply changes to gateway.toml and tenants/ to the running gateway (like SIGHUP).

    Only the difference is applied: added tenants start, removed ones stop, changed ones are
    replaced without losing a request. An invalid config is reported and nothing changes.
    Waits until every added or changed tenant serves, or has failed to start (exit 1: a changed
    tenant's previous process keeps serving; a new one keeps being retried).

    \b
    Example:
        gateway reload
        gateway reload --cluster    # each node's answer; exit 1 if any failed
    """
    if every_node:
        _reload_cluster(_config(ctx), as_json)
        return
    report = _call(_config(ctx), "POST", "/reload")
    _print(report, as_json, _reload_text)
    if report["failed"]:
        failed = len(report["failed"])
        raise click.ClickException(f"{failed} tenant{'s' if failed != 1 else ''} failed to start:"
                                   f" {', '.join(report['failed'])}")


def _reload_text(report: dict[str, Any]) -> str:
    lines = [f"{key}: {', '.join(report[key]) or '-'}"
             for key in ("added", "removed", "changed", "needs_restart")]
    lines += [f"{name}: serving" for name in report["serving"]]
    lines += [f"{name}: failed: {reason}" for name, reason in report["failed"].items()]
    return "\n".join(lines)


def _reload_cluster(config: Config, as_json: bool) -> None:
    answers = _call(config, "POST", "/cluster/reload", timeout=660)

    def text(answers: dict[str, Any]) -> str:
        lines = []
        for node, answer in answers.items():
            if not answer["ok"]:
                lines.append(f"{node}: error: {answer['error']}")
                continue
            lines.append(f"{node}:")
            lines += [f"  {line}" for line in _reload_text(answer["result"]).splitlines()]
        return "\n".join(lines)

    _print(answers, as_json, text)
    failed = sorted(node for node, answer in answers.items()
                    if not answer["ok"] or answer["result"]["failed"])
    if failed:
        raise click.ClickException(f"the reload failed on {', '.join(failed)}")


@cli.command()
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
    if "cluster" in status:
        node = status["cluster"]
        lines.append(f"cluster    node {node['node']} ({node['role']}"
                     f"{', leader' if node['leader'] else ''}), hosting"
                     f" {', '.join(node['hosting']) or 'nothing'}")
        lines += _cluster_view_text(node["view"])
    sleeping = sum(1 for tenant in status["tenants"] if tenant["state"] == "sleeping")
    sleep = status["sleep"]
    if sleeping or sleep["awake"] or sleep["cap"]:
        cap = f"max_awake_tenants {sleep['cap']}" if sleep["cap"] else "no max_awake_tenants"
        lines.append(f"sleep      {sleep['awake']} awake that may sleep ({cap}),"
                     f" {sleeping} sleeping")
    lines.append("")
    lines.append(f"{'TENANT':<20} {'STATE':<11} {'PID':>7} {'GEN':>5} {'RESTARTS':>8}  DATABASES")
    for tenant in status["tenants"]:
        lines.append(
            f"{tenant['name']:<20} {tenant['state']:<11} {tenant['pid'] or '-':>7}"
            f" {tenant['generation'] or '-':>5} {tenant['restarts']:>8}"
            f"  {', '.join(tenant['databases']) or '-'}"
        )
        last = tenant["last_failure"]
        if tenant["failure"] and (last is None or last["reason"] != tenant["failure"]):
            lines.append(f"{'':<20} {tenant['failure']}")
        if last is not None:
            lines.append(f"{'':<20} last failure {_iso(last['time'])}: {last['reason']}")
    return "\n".join(lines)


def _cluster_view_text(view: dict[str, Any]) -> list[str]:
    """The whole cluster as etcd has it: nodes, then where each tenant runs."""
    if "error" in view:
        return [f"           etcd: {view['error']}"]
    lines = ["", f"{'NODE':<20} {'ROLE':<5} {'LEASE':>8} {'CAPACITY':>8}  TENANTS"]
    for node in view["nodes"]:
        ttl = node["lease_ttl_s"]
        name = node["node"] + (" (leader)" if node["leader"] else "")
        capacity = "-" if node["capacity"] is None else node["capacity"]
        lines.append(f"{name:<20} {node['role']:<5} {'expired' if ttl < 0 else f'{ttl} s':>8}"
                     f" {capacity:>8}  {', '.join(node['tenants']) or '-'}")
    lines += ["", f"{'PLACED':<20} {'HOST':<20} ENDPOINT"]
    for tenant, host in view["placement"].items():
        lines.append(f"{tenant:<20} {host:<20} {view['endpoints'].get(tenant, '-')}")
    lines += [f"{tenant:<20} {'-':<20} not placed: no host has room" for tenant in
              view["unplaced"]]
    return lines


@cli.command("health")
@json_option
@click.pass_context
def health_command(ctx: click.Context, as_json: bool) -> None:
    """Ask the running gateway's HTTP listener for /-/health; exit 1 unless it answers 200.

    Docker's HEALTHCHECK runs this.

    \b
    Example:
        gateway health
    """
    from .health import check_health

    answer = check_health(_config(ctx))
    states = answer["tenants"]  # how many tenants are in each state
    running, sleeping = states.get("running", 0), states.get("sleeping", 0)
    _print(answer, as_json,
           lambda _: f"healthy: {running} of {sum(states.values())} tenants running"
           + (f", {sleeping} sleeping" if sleeping else ""))


@cli.group()
def tenant() -> None:
    """Add, list, remove and restart tenants."""


@tenant.command("add")
@click.argument("name")
@click.option("--public", is_flag=True, help="Anyone may browse it (default: members only).")
@click.option("--member", "members", multiple=True, metavar="EMAIL",
              help="An account that may see it (repeatable).")
@click.option("--owner", "owners", multiple=True, metavar="EMAIL",
              help="An account that may see it and manage its team (repeatable).")
@click.pass_context
def tenant_add(ctx: click.Context, name: str, public: bool, members: tuple[str, ...],
               owners: tuple[str, ...]) -> None:
    """Create tenants/NAME; run `gateway reload` to start it.

    In a cluster, from any node: NAME's definition (this node's tenants/NAME if you prepared
    it, else a new tenant.toml) goes to etcd, every node makes tenants/NAME from it, a host
    starts it; no reload needed.

    \b
    Example:
        gateway tenant add carol --owner ann@example.com && gateway reload
    """
    config = _config(ctx)
    from .auth.passwords import normalise_email

    if config.gateway.cluster.etcd_endpoints:
        _add_to_cluster(config, name, public, members, owners)
        return
    accounts = _accounts_for(config)
    accounts.check_users_exist(members + owners)
    directory = tenant_files.create_tenant(config.gateway.paths.tenants_dir, name,
                                           public=public)
    for email in members:
        accounts.store.add_member(name, normalise_email(email))
    for email in owners:
        accounts.store.add_member(name, normalise_email(email), "owner")
    click.echo(f"Created {directory}. Put SQLite files in {directory / 'data'} and run"
               " `gateway reload` (or send SIGHUP) to start it.")


def _add_to_cluster(config: Config, name: str, public: bool, members: tuple[str, ...],
                    owners: tuple[str, ...]) -> None:
    import asyncio

    from .auth.passwords import normalise_email
    from .cluster import definitions

    accounts = _accounts_for(config) if members or owners else None
    if accounts is not None:
        accounts.check_users_exist(members + owners)
    asyncio.run(definitions.add(config, name, public=public))
    if accounts is not None:
        for email in members:
            accounts.store.add_member(name, normalise_email(email))
        for email in owners:
            accounts.store.add_member(name, normalise_email(email), "owner")
    click.echo(f"Added {name} to the cluster: every node makes tenants/{name}/ (its data/"
               " starts empty) and the leader places it on a host; `gateway status` shows"
               " where.")


@tenant.command("list")
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
        running = _call(config, "GET", "/status")["tenants"]
        states = {t["name"]: t["state"] for t in running}
    rows = [
        {"name": name, "public": t.settings.public, "databases": list(t.databases),
         "state": states.get(name, "not running")}
        for name, t in config.tenants.items()
    ]
    _print(rows, as_json, lambda rows: "\n".join(
        f"{r['name']:<20} {'public' if r['public'] else 'private':<8} {r['state']:<12}"
        f" {', '.join(r['databases']) or '-'}" for r in rows) or "no tenants")


@tenant.command("remove")
@click.argument("name")
@click.pass_context
def tenant_remove(ctx: click.Context, name: str) -> None:
    """Move tenants/NAME aside (to tenants/.removed/); run `gateway reload` to stop it.

    No data is deleted: the folder, with its databases, is kept under tenants/.removed/. Its
    memberships end (they are printed), so a later tenant of the same name starts with none.
    In a cluster, from any node: its definition leaves etcd, its host stops it and every node
    moves its folder aside; no reload needed.

    \b
    Example:
        gateway tenant remove carol && gateway reload
    """
    config = _config(ctx)
    if config.gateway.cluster.etcd_endpoints and _remove_from_cluster(config, name):
        return
    tenant_files.existing_tenant(config.gateway.paths.tenants_dir, name)
    # Memberships first: when the accounts cannot be reached (a cluster without etcd) nothing
    # has changed yet, and a folder is never moved away leaving its members to a later tenant
    # of the same name.
    former = _accounts_for(config).forget_tenant(name)
    moved = tenant_files.remove_tenant(config.gateway.paths.tenants_dir, name)
    if config.gateway.cluster.etcd_endpoints:
        click.echo(f"Moved to {moved}. Remove it on every node, then run"
                   " `gateway reload --cluster` to stop it.")
    else:
        click.echo(f"Moved to {moved}. Run `gateway reload` (or send SIGHUP) to stop it.")
    if former:
        click.echo(f"Memberships ended: {', '.join(former)}")


def _remove_from_cluster(config: Config, name: str) -> bool:
    """Withdraw a published tenant (False: it is not published, only in this node's tenants/,
    made by hand)."""
    import asyncio

    from .cluster import definitions

    if not asyncio.run(definitions.is_published(config, name)):
        return False
    former = _accounts_for(config).forget_tenant(name)  # first, as on one machine
    asyncio.run(definitions.remove(config, name))
    click.echo(f"Removed {name} from the cluster: its host stops it and every node moves"
               f" tenants/{name}/ to tenants/.removed/ (nothing is deleted).")
    if former:
        click.echo(f"Memberships ended: {', '.join(former)}")
    return True


@tenant.command("restart")
@click.argument("name")
@click.pass_context
def tenant_restart(ctx: click.Context, name: str) -> None:
    """Replace NAME's process without losing a request (start new, switch, drain old).

    \b
    Example:
        gateway tenant restart alice
    """
    answer = _call(_config(ctx), "POST", f"/tenants/{name}/restart")
    click.echo(f"Restarted {name}" + (f" on {answer['host']}." if "host" in answer else "."))


@tenant.command("move")
@click.argument("name")
@click.argument("host")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds to wait for NAME to serve from HOST.")
@json_option
@click.pass_context
def tenant_move(ctx: click.Context, name: str, host: str, timeout_s: float,
                as_json: bool) -> None:
    """Move NAME to cluster host HOST without failing a request (from any node).

    The old host stops it once its replica has every write; HOST restores that replica and
    starts it; edges hold NAME's requests meanwhile (proxy.retry_budget_s).

    \b
    Example:
        gateway tenant move alice host-b
    """
    import asyncio

    from .cluster import moves

    done = asyncio.run(moves.move(_config(ctx), name, host, timeout_s))
    _print(done, as_json, lambda d: f"Moved {d['tenant']} from {d['from']} to {d['to']}"
                                    f" in {d['duration_s']:.1f} s.")


@tenant.command("members")
@click.argument("name")
@click.option("--add", "added", multiple=True, metavar="EMAIL", help="Add a member (repeatable).")
@click.option("--remove", "removed", multiple=True, metavar="EMAIL",
              help="Remove a member (repeatable).")
@click.option("--owner", "owners", multiple=True, metavar="EMAIL",
              help="Make an account an owner, adding it if needed (repeatable).")
@click.option("--member", "demoted", multiple=True, metavar="EMAIL",
              help="Make an owner a member again (repeatable).")
@json_option
@click.pass_context
def tenant_members(ctx: click.Context, name: str, added: tuple[str, ...],
                   removed: tuple[str, ...], owners: tuple[str, ...], demoted: tuple[str, ...],
                   as_json: bool) -> None:
    """List, add or remove the accounts that may see a tenant, and name its owners.

    Members see a private tenant and upload to it; owners also manage its team on the Team
    page. The running gateway applies changes within auth.session_cache_s seconds.

    \b
    Example:
        gateway tenant members bob --add ann@example.com --remove joe@example.com
        gateway tenant members bob --owner ann@example.com
    """
    accounts = _accounts(ctx)
    for email in added:
        accounts.add_member(name, email)
    for email in owners:
        accounts.add_member(name, email, "owner")
    for email in demoted:
        accounts.add_member(name, email, "member")
    for email in removed:
        accounts.remove_member(name, email)
    team = [{"email": email, "role": role} for email, role in accounts.team(name)]
    _print(team, as_json, lambda team: "\n".join(
        m["email"] + ("  (owner)" if m["role"] == "owner" else "") for m in team)
        or f"{name} has no members")


@cli.group()
def backup() -> None:
    """Replication of every database to object storage ([backup] in gateway.toml)."""


@backup.command("status")
@json_option
@click.pass_context
def backup_status(ctx: click.Context, as_json: bool) -> None:
    """Per database: last sync, lag, replica size and snapshots, as the bucket has them.

    \b
    Example:
        gateway backup status
    """
    from .backup import restore

    _print(restore.status(_config(ctx)), as_json, _backup_status_text)


def _backup_status_text(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'tenant':<16} {'database':<24} {'last sync':<26} {'lag':>8} {'size':>12}"
             f" {'snapshots':>9}"]
    for row in rows:
        lag = "-" if row["lag_s"] is None else f"{row['lag_s']:g} s"
        lines.append(f"{row['tenant'] or '(state)':<16} {row['database']:<24}"
                     f" {row['last_sync'] or 'never':<26} {lag:>8} {row['replica_bytes']:>12}"
                     f" {row['snapshots']:>9}")
    return "\n".join(lines)


@cli.command("restore")
@click.argument("tenant", required=False)
@click.option("--at", help="A point in time (ISO 8601, UTC unless it says): the data as it was"
              " then. Default: the newest.")
@click.option("--database", help="Restore only this database file (e.g. data.db); the others"
              " stay as they are.")
@click.option("--all", "whole_site", is_flag=True,
              help="Rebuild tenants/ and state/ (with --to) from the bucket.")
@click.option("--to", type=click.Path(path_type=Path), help="With --all: an empty folder.")
@click.pass_context
def restore_command(ctx: click.Context, tenant: str | None, at: str | None,
                    database: str | None, whole_site: bool, to: Path | None) -> None:
    """Bring back a tenant's data (or a whole site) from the replicas in [backup]'s bucket.

    A tenant's data/ is replaced by a hot swap: no request fails, and the old folder is kept
    in tenants/.restored/.

    \b
    Examples:
        gateway restore alice --at 2026-03-01T09:30:00Z
        gateway restore alice --database sales.db
        gateway restore --all --to /srv/gateway
    """
    from .backup import restore

    if whole_site:
        if tenant or at or database or to is None:
            raise click.UsageError("--all takes --to DIR and nothing else")
        config = load_config(ctx.obj["config_path"], with_tenants=False)
        done = restore.restore_site(config, to / "tenants", to / "state")
        if done is None:
            raise GatewayError(f"the bucket {config.gateway.backup.bucket!r} has no site under"
                               f" the prefix {config.gateway.backup.prefix!r}")
        click.echo(f"Restored {len(done['tenants'])} tenants ({done['databases']} databases)"
                   f" and state/ into {to} in {done['duration_s']:g} s.")
        return
    if tenant is None or to is not None:
        raise click.UsageError("name a TENANT, or use --all --to DIR")
    config = _config(ctx)
    when = restore.parse_time(at) if at else None
    kept = restore.restore_tenant(config, tenant, when, database)
    click.echo(f"Restored {tenant}" + (f"; its previous data is in {kept}." if kept else "."))
    try:
        _call(config, "POST", f"/tenants/{tenant}/restart")
    except GatewayError as exc:
        click.echo(f"Not swapped in yet ({exc}): the gateway serves it when it starts.")
    else:
        click.echo(f"{tenant} now serves the restored data.")


@cli.group()
def user() -> None:
    """Accounts: add, invite, list, remove; API tokens."""


def _accounts(ctx: click.Context) -> Accounts:
    return _accounts_for(_config(ctx))


def _accounts_for(config: Config) -> Accounts:
    from .auth.accounts import Accounts

    accounts = Accounts(config)
    click.get_current_context().call_on_close(accounts.close)  # a cluster's: its etcd client
    return accounts


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        command = click.get_current_context().command_path
        raise GatewayError("no terminal to ask for the password on: pipe it in with"
                           f' --password-stdin, e.g. echo "$PASSWORD" | {command} EMAIL'
                           " --password-stdin")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@user.command("add")
@click.argument("email")
@password_stdin_option
@click.pass_context
def user_add(ctx: click.Context, email: str, password_stdin: bool) -> None:
    """Create an account; the password is asked for (or read from stdin).

    \b
    Example:
        gateway user add ann@example.com
        echo "$PASSWORD" | gateway user add ann@example.com --password-stdin
    """
    accounts = _accounts(ctx)
    email = accounts.add_user(email, _read_password(password_stdin))
    click.echo(f"Added {email}. Give it tenants with `gateway tenant members NAME --add {email}`.")


@user.command("password")
@click.argument("email")
@password_stdin_option
@click.pass_context
def user_password(ctx: click.Context, email: str, password_stdin: bool) -> None:
    """Set a new password; the account's sessions end.

    \b
    Example:
        gateway user password ann@example.com
    """
    accounts = _accounts(ctx)
    accounts.set_password(email, _read_password(password_stdin))
    click.echo(f"Changed the password of {email}; its sessions have ended.")


@user.command("remove")
@click.argument("email")
@click.pass_context
def user_remove(ctx: click.Context, email: str) -> None:
    """Delete an account with its sessions, API tokens and memberships.

    \b
    Example:
        gateway user remove ann@example.com
    """
    accounts = _accounts(ctx)
    accounts.remove_user(email)
    click.echo(f"Removed {email}.")


@user.command("admin")
@click.argument("email")
@click.option("--remove", is_flag=True, help="No longer an admin.")
@click.pass_context
def user_admin(ctx: click.Context, email: str, remove: bool) -> None:
    """Let an account see the dashboard, /-/admin on the apex (or no longer, with --remove).

    \b
    Example:
        gateway user admin ann@example.com
    """
    from .auth.passwords import normalise_email

    accounts = _accounts(ctx)
    email = normalise_email(email)
    if remove:
        if not accounts.store.remove_admin(email):
            raise GatewayError(f"{email} is not an admin")
        click.echo(f"{email} is no longer an admin.")
        return
    accounts.check_users_exist((email,))
    accounts.store.add_admin(email, time.time())
    click.echo(f"{email} is an admin: the dashboard is at /-/admin on the apex domain.")


@user.command("list")
@json_option
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List the accounts and the tenants they are members of.

    \b
    Example:
        gateway user list
    """
    rows = [
        {"email": u.email, "tenants": list(u.tenants), "created": _iso(u.created),
         "last_sign_in": _iso(u.last_sign_in)}
        for u in _accounts(ctx).users()
    ]
    _print(rows, as_json, lambda rows: "\n".join(
        f"{r['email']:<32} {', '.join(r['tenants']) or '-':<24} last sign-in"
        f" {r['last_sign_in'] or 'never'}" for r in rows) or "no accounts")


@user.command("invite")
@click.argument("email")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME",
              help="A tenant the new account will be a member of (repeatable).")
@click.pass_context
def user_invite(ctx: click.Context, email: str, tenants: tuple[str, ...]) -> None:
    """Print a one-time sign-up link (valid for auth.invite_ttl_s) for a new account.

    \b
    Example:
        gateway user invite ann@example.com --tenant bob
    """
    accounts = _accounts(ctx)
    link = accounts.invite(email, tenants)
    click.echo(link)


@user.command("token")
@click.argument("email")
@click.option("--name", default="", help="What the token is for (shown by `user tokens`).")
@click.pass_context
def user_token(ctx: click.Context, email: str, name: str) -> None:
    """Issue an API token for scripts: send it as `Authorization: Bearer TOKEN` to a tenant.

    The token is printed once; only its hash is kept. Revoke it with `gateway user
    revoke-token ID`.

    \b
    Example:
        gateway user token ann@example.com --name nightly-export
        curl -H "Authorization: Bearer $TOKEN" https://bob.example.com/data.json
    """
    accounts = _accounts(ctx)
    token_id, token = accounts.issue_token(email, name)
    click.echo(token)
    click.echo(f"(token id {token_id}: `gateway user revoke-token {token_id}` revokes it)",
               err=True)


@user.command("tokens")
@click.argument("email", required=False)
@json_option
@click.pass_context
def user_tokens(ctx: click.Context, email: str | None, as_json: bool) -> None:
    """List API tokens (of one account, or of all).

    \b
    Example:
        gateway user tokens ann@example.com
    """
    tokens = _accounts(ctx).tokens(email)
    rows = [{"id": t.id, "email": t.email, "name": t.name, "created": _iso(t.created),
             "last_used": _iso(t.last_used)} for t in tokens]
    _print(rows, as_json, lambda rows: "\n".join(
        f"{r['id']}  {r['email']:<32} {r['name'] or '-':<20} last used {r['last_used'] or 'never'}"
        for r in rows) or "no API tokens")


@user.command("revoke-token")
@click.argument("token_id")
@click.pass_context
def user_revoke_token(ctx: click.Context, token_id: str) -> None:
    """Revoke an API token by its id (see `gateway user tokens`).

    \b
    Example:
        gateway user revoke-token 3f9a0c1d
    """
    accounts = _accounts(ctx)
    accounts.revoke_token(token_id)
    click.echo(f"Revoked token {token_id}.")


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@cli.group()
def cert() -> None:
    """Show and renew the HTTPS certificate of the running gateway."""


@cert.command("status")
@json_option
@click.pass_context
def cert_status(ctx: click.Context, as_json: bool) -> None:
    """Show the certificate's names, issuer and expiry, and when it will be renewed.

    \b
    Example:
        gateway cert status
    """
    status = _call(_config(ctx), "GET", "/certificate")
    if status["mode"] == "off" and not as_json:
        raise GatewayError(status["renewal_basis"])
    _print(status, as_json, _certificate_text)


@cert.command("renew")
@click.option("--force", is_flag=True, help="Renew now, even if the certificate is not due.")
@json_option
@click.pass_context
def cert_renew(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Renew the certificate if it is due (or now, with --force); wait for the result.

    The certificate being served stays in place if renewal fails. New connections get the new
    certificate at once; open ones keep theirs.

    \b
    Example:
        gateway cert renew --force
    """
    config = _config(ctx)
    tls = config.gateway.tls
    timeout = tls.acme.timeout_s + tls.dns.wait_timeout_s + 60
    result = _call(config, "POST", "/certificate/renew", params={"force": int(force)},
                   timeout=timeout)

    def text(result: dict[str, Any]) -> str:
        if result["renewed"]:
            by = f" by the cluster's leader, {result['renewed_by']}" \
                if "renewed_by" in result else ""
            return f"Renewed{by}.\n" + _certificate_text(result)
        return (f"Not due: the next renewal is at {result['next_renewal']}"
                f" ({result['renewal_basis']}). Use --force to renew now.")

    _print(result, as_json, text)


def _certificate_text(status: dict[str, Any]) -> str:
    certificate = status["certificate"]
    lines = [f"mode          {status['mode']}"]
    if certificate is None:
        lines.append("certificate   none yet: HTTPS refuses connections until one is issued")
    else:
        lines += [
            f"names         {', '.join(certificate['names'])}",
            f"issuer        {certificate['issuer']}",
            f"serial        {certificate['serial']}",
            f"valid         {certificate['not_before']} to {certificate['not_after']}",
        ]
    if status["next_renewal"]:
        lines.append(f"next renewal  {status['next_renewal']} ({status['renewal_basis']})")
    else:
        lines.append(f"renewal       {status['renewal_basis']}")
    if status.get("last_error"):
        failures = status["failures"]
        lines.append(f"last error    {status['last_error']} (failed {failures} time"
                     f"{'s' if failures != 1 else ''} in a row)")
    return "\n".join(lines)


if __name__ == "__main__":
    cli()


@cli.group(context_settings=CONTEXT)
def cluster() -> None:
    """The cluster's certificates (edges and hosts talk over mutual TLS)."""


def _ca_folder(ctx: click.Context, folder: Path | None) -> Path:
    if folder is not None:
        return folder
    tls_dir = _config(ctx).gateway.cluster.tls_dir
    if tls_dir is None:  # load_config always resolves it
        raise GatewayError("cluster.tls_dir is not set: pass --dir")
    return tls_dir


@cluster.command("init", context_settings=CONTEXT)
@click.option("--dir", "folder", type=click.Path(path_type=Path),
              help="Where the CA goes (default: cluster.tls_dir).")
@click.pass_context
def cluster_init(ctx: click.Context, folder: Path | None) -> None:
    """Make the cluster CA (ca.pem, ca.key) and its secret.key. Keep ca.key off the nodes if
    you can; secret.key goes to every node (it seals the ACME certificate's key in etcd)."""
    from .cluster import tls

    cert = tls.init_ca(_ca_folder(ctx, folder))
    click.echo(f"cluster CA: {cert}")


@cluster.command("cert", context_settings=CONTEXT)
@click.argument("node")
@click.option("--dir", "folder", type=click.Path(path_type=Path),
              help="Where the CA is (default: cluster.tls_dir).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where the node's files go (default: <CA folder>/<NODE>).")
@click.pass_context
def cluster_cert(ctx: click.Context, node: str, folder: Path | None, out: Path | None) -> None:
    """Issue NODE's certificate: copy ca.pem, node.pem, node.key, secret.key to its
    cluster.tls_dir."""
    from .cluster import tls

    ca_folder = _ca_folder(ctx, folder)
    cert = tls.issue_node(ca_folder, node, out or ca_folder / node)
    click.echo(f"{node}: {cert}")

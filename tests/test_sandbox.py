"""What a tenant process can and cannot do (as root: own uid, bubblewrap). A probe plugin runs
inside tenant alice's Datasette and reports what it tried."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import TenantSettings, load_config
from gateway.keys import load_master_key, tenant_secret
from gateway.sandbox import Isolation, TenantPaths, launch, rlimit_argv, sandbox_view

from .conftest import UID_BASE, RunningGateway, Site

PROBE_PLUGIN = '''
import hashlib
import os
import socket

from datasette import hookimpl
from datasette.utils.asgi import Response


def attempt(kind, path):
    try:
        if kind == "read":
            with open(path, "rb") as f:
                f.read(16)
        elif kind == "write":
            with open(path, "w") as f:
                f.write("x")
        elif kind == "list":
            os.listdir(path)
        elif kind == "connect":
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
            finally:
                s.close()
        elif kind == "tcp":
            host, port = path.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=2).close()
        return "ok"
    except OSError as exc:
        return type(exc).__name__


@hookimpl
def register_routes():
    async def probe(request):
        return Response.json({"result": attempt(request.args["kind"], request.args["path"])})

    async def whoami(request):
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return Response.json({
            "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "cap_eff": fields["CapEff"], "cap_bnd": fields["CapBnd"],
            "no_new_privs": fields["NoNewPrivs"], "environ": sorted(os.environ),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "secret_sha256": hashlib.sha256(os.environ["DATASETTE_SECRET"].encode()).hexdigest(),
        })

    return [(r"^/-/probe$", probe), (r"^/-/whoami$", whoami)]
'''


@pytest.fixture
def gateway(site: Site, start_gateway) -> RunningGateway:  # type: ignore[no-untyped-def]
    alice = site.add_tenant("alice")
    (alice / "plugins").mkdir()
    (alice / "plugins" / "probe.py").write_text(PROBE_PLUGIN)
    (alice / "metadata.json").write_text('{"title": "alice"}')
    site.add_tenant("bob", database="bob.db")
    (site.root / "certs").mkdir()
    (site.root / "certs" / "privkey.pem").write_text("secret")
    gateway = start_gateway()
    gateway.wait_running("alice", "bob")
    return gateway


def _sandboxed(gateway: RunningGateway) -> bool:
    """Whether tenants run in bubblewrap: root here and in CI, so always, but said once."""
    return gateway.status()["isolation"]["level"] in ("full", "root-bwrap")


def probe(gateway: RunningGateway, kind: str, path: str | Path) -> str:
    response = gateway.get("alice", "/-/probe", params={"kind": kind, "path": str(path)})
    assert response.status_code == 200, response.text
    return response.json()["result"]  # type: ignore[no-any-return]


@pytest.mark.root
def test_tenants_run_as_their_own_users_without_privileges(gateway: RunningGateway) -> None:
    who = gateway.get("alice", "/-/whoami").json()
    status = {t["name"]: t for t in gateway.status()["tenants"]}
    assert who["uid"] == status["alice"]["uid"] != status["bob"]["uid"]
    assert UID_BASE <= who["uid"] <= UID_BASE + 999
    assert who["gid"] == who["uid"]
    assert who["groups"] == []
    assert int(who["cap_eff"], 16) == 0
    assert set(who["environ"]) <= {
        "PATH", "HOME", "LANG", "DATASETTE_SECRET", "MALLOC_ARENA_MAX",
        "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "LC_CTYPE", "PWD",
    }


@pytest.mark.root
def test_a_tenant_cannot_reach_another_tenants_files_or_socket(
    site: Site, gateway: RunningGateway
) -> None:
    bob = site.tenants_dir / "bob"
    bob_socket = site.root / "run" / str(gateway.tenant("bob")["generation"]) / "ds.sock"
    assert bob_socket.exists()
    # In a sandbox none of it exists; with only a uid of its own, modes deny it.
    hidden = "FileNotFoundError" if _sandboxed(gateway) else "PermissionError"
    assert probe(gateway, "read", bob / "data" / "bob.db") == hidden
    assert probe(gateway, "list", bob / "data") == hidden
    assert probe(gateway, "connect", bob_socket) == hidden
    assert probe(gateway, "read", site.root / "certs" / "privkey.pem") == hidden
    assert probe(gateway, "list", site.root / "state") == hidden


@pytest.mark.root
def test_a_tenant_writes_only_its_own_data(site: Site, gateway: RunningGateway) -> None:
    level = gateway.status()["isolation"]["level"]
    data = "/data" if level in ("full", "root-bwrap") else site.tenants_dir / "alice" / "data"
    conf = "/conf/metadata.json" if level in ("full", "root-bwrap") else (
        site.tenants_dir / "alice" / "metadata.json")
    assert probe(gateway, "write", f"{data}/made-by-alice.txt") == "ok"
    made = site.tenants_dir / "alice" / "data" / "made-by-alice.txt"
    assert made.stat().st_uid == gateway.tenant("alice")["uid"]
    sandboxed = _sandboxed(gateway)
    # Read-only mounts: EROFS, which has no OSError subclass of its own.
    assert probe(gateway, "write", conf) == ("OSError" if sandboxed else "PermissionError")
    assert probe(gateway, "write", site.tenants_dir / "alice" / "tenant.toml") == (
        "FileNotFoundError" if sandboxed else "PermissionError")
    assert probe(gateway, "write", "/usr/local/evil") == (
        "OSError" if sandboxed else "PermissionError")


@pytest.mark.root
def test_full_sandbox_has_no_network_and_no_other_processes(gateway: RunningGateway) -> None:
    if gateway.status()["isolation"]["level"] not in ("full", "root-bwrap"):
        pytest.skip("bubblewrap namespaces are not available here")
    assert probe(gateway, "tcp", f"127.0.0.1:{gateway.port}") == "ConnectionRefusedError"
    who = gateway.get("alice", "/-/whoami").json()
    assert who["pids"] == [1]  # its own PID namespace: only itself (Datasette is PID 1)


def tenant_secrets(site: Site) -> dict[str, str]:
    key = load_master_key(load_config(site.config_path).gateway.paths.state_dir)
    return {name: tenant_secret(key, name) for name in ("alice", "bob")}


@pytest.mark.root
def test_secret_is_not_on_the_command_line(site: Site, gateway: RunningGateway) -> None:
    secrets = tenant_secrets(site)
    for tenant in gateway.status()["tenants"]:
        with open(f"/proc/{tenant['pid']}/cmdline", "rb") as f:
            cmdline = f.read()
        assert len(secrets[tenant["name"]]) == 64
        assert secrets[tenant["name"]].encode() not in cmdline


@pytest.mark.root
def test_each_tenant_has_its_own_secret(site: Site, gateway: RunningGateway) -> None:
    # Datasette has it from its environment (set at exec, or by a spare at its handoff).
    secrets = tenant_secrets(site)
    who = gateway.get("alice", "/-/whoami").json()
    assert who["secret_sha256"] == hashlib.sha256(secrets["alice"].encode()).hexdigest()
    assert secrets["alice"] != secrets["bob"]


@pytest.mark.root
def test_data_folder_modes(site: Site, gateway: RunningGateway) -> None:
    alice = site.tenants_dir / "alice"
    uid = gateway.tenant("alice")["uid"]
    assert (alice / "data").stat().st_uid == uid
    assert (alice / "data").stat().st_mode & 0o7777 == 0o2770  # the group: its replication
    assert (alice / "data").stat().st_gid == uid
    assert (alice / "data" / "data.db").stat().st_uid == uid  # created by root: handed over
    assert alice.stat().st_mode & 0o777 == 0o750
    assert alice.stat().st_gid == uid


def paths(tmp: Path) -> TenantPaths:
    return TenantPaths(venv=tmp / "venv", package_parent=tmp / "src", data_dir=tmp / "d",
                       run_dir=tmp / "r", metadata_file=tmp / "metadata.json", plugins_dir=None)


def command(level: Any, tmp: Path) -> list[str]:
    isolation = Isolation(level, "test")
    view = sandbox_view(isolation, paths(tmp))
    return launch(isolation, uid=20001, settings=TenantSettings(), paths=paths(tmp),
                  lifeline_fd=5, status_fd=6, secret="s3cret", databases=[],
                  datasette_args=["serve", "--uds", str(view.run_dir / "ds.sock")]).argv


def test_command_lines_never_carry_the_secret(tmp_path: Path) -> None:
    for level in ("full", "root-bwrap", "uid", "unprivileged", "none"):
        assert "s3cret" not in " ".join(command(level, tmp_path))


def test_rlimits_come_from_settings() -> None:
    argv = rlimit_argv(TenantSettings(memory_mb=256, open_files=100, processes=9))
    assert argv == ["prlimit", f"--as={256 << 20}:{256 << 20}", "--nofile=100:100",
                    "--nproc=9:9", "--core=0:0", "--"]


def test_privileges_are_dropped_at_every_level_that_switches_user(tmp_path: Path) -> None:
    for level in ("full", "root-bwrap", "uid"):
        argv = command(level, tmp_path)
        assert "--reuid=20001" in argv and "--clear-groups" in argv and "--inh-caps=-all" in argv
    for level in ("unprivileged", "none"):
        assert not any(arg.startswith("--reuid") for arg in command(level, tmp_path))
    unprivileged = command("unprivileged", tmp_path)
    assert unprivileged[unprivileged.index("--") + 1:][:2] == ["bwrap", "--unshare-all"]
    full = command("full", tmp_path)
    assert full.index("setpriv") < full.index("bwrap")  # unprivileged bwrap, as the tenant
    root_bwrap = command("root-bwrap", tmp_path)
    assert root_bwrap.index("bwrap") < root_bwrap.index("setpriv")
    assert "--no-new-privs" in root_bwrap and "--bounding-set=-all" in root_bwrap
    assert os.path.basename(full[full.index("--ro-bind", full.index("bwrap")) + 1]) == "usr"


@pytest.mark.root
def test_a_gateway_that_is_not_root_still_sandboxes_its_tenants(
    site: Site, start_gateway  # type: ignore[no-untyped-def]
) -> None:
    """1. Run `gateway serve` as a user that is not root (setpriv to an unused uid). 2. status
    says `unprivileged`, and that tenants lack a uid of their own. 3. alice runs as the gateway's
    user, but sees neither the gateway's state nor bob, has no network and only its own PID."""
    uid = UID_BASE + 990
    alice = site.add_tenant("alice")
    (alice / "plugins").mkdir()
    (alice / "plugins" / "probe.py").write_text(PROBE_PLUGIN)
    site.add_tenant("bob", database="bob.db")
    for root, dirs, files in os.walk(site.root):
        for name in [".", *dirs, *files]:
            os.chown(os.path.join(root, name), uid, uid)
    gateway = start_gateway(
        wrapper=["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    )
    gateway.wait_running("alice", "bob")
    isolation = gateway.status()["isolation"]
    assert (isolation["level"], isolation["missing"]) == ("unprivileged", ["own uid/gid"])
    assert isolation["reason"] == (
        "the gateway is not running as root, so tenants share its user;"
        " bubblewrap with user namespaces"
    )
    assert "not available: own uid/gid" in gateway.cli("status").stdout
    who = gateway.get("alice", "/-/whoami").json()
    assert (who["uid"], who["pids"], int(who["cap_eff"], 16)) == (uid, [1], 0)
    key = site.root / "state" / "secret.key"
    assert key.exists()
    assert probe(gateway, "read", key) == "FileNotFoundError"
    assert probe(gateway, "list", site.tenants_dir / "bob") == "FileNotFoundError"
    assert probe(gateway, "tcp", f"127.0.0.1:{gateway.port}") == "ConnectionRefusedError"
    assert probe(gateway, "write", "/data/made-by-alice.txt") == "ok"
    assert (alice / "data" / "made-by-alice.txt").stat().st_uid == uid

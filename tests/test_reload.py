"""Reload (SIGHUP or `gateway reload`): apply only the difference, keep serving on bad config."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from gateway.config import load_config
from gateway.reload import plan_reload

from .conftest import RunningGateway, Site, wait_until


@pytest.fixture
def gateway(alice_and_bob: RunningGateway) -> RunningGateway:
    return alice_and_bob


def test_sighup_adds_a_tenant_without_touching_the_others(
    site: Site, gateway: RunningGateway
) -> None:
    before = gateway.pids()
    assert gateway.get("carol", "/").status_code == 404
    site.add_tenant("carol")
    gateway.signal(signal.SIGHUP)
    wait_until(lambda: gateway.get("carol", "/data/items.json").status_code == 200, 30,
               message="carol serving")
    after = gateway.pids()
    assert after["alice"] == before["alice"] and after["bob"] == before["bob"]


def test_reload_removes_a_tenant(site: Site, gateway: RunningGateway) -> None:
    bob_pid = gateway.pids()["bob"]
    assert gateway.cli("tenant", "remove", "bob").returncode == 0
    plan = gateway.cli("reload").stdout
    assert "removed: bob" in plan
    assert gateway.get("bob", "/").status_code == 404
    wait_until(lambda: not _alive(bob_pid), message="bob's process gone")
    assert gateway.get("alice", "/data/items.json").status_code == 200
    assert next((site.tenants_dir / ".removed").iterdir()).name.startswith("bob.")


def test_reload_replaces_a_changed_tenant_only(site: Site, gateway: RunningGateway) -> None:
    before = gateway.pids()
    (site.tenants_dir / "alice" / "tenant.toml").write_text(
        "public = true\n[datasette]\nmax_returned_rows = 7\n"
    )
    plan = gateway.cli("reload", "--json").stdout
    assert '"changed": [\n    "alice"\n  ]' in plan
    after = gateway.pids()
    assert after["alice"] != before["alice"]
    assert after["bob"] == before["bob"]
    settings = gateway.get("alice", "/-/settings.json").json()
    assert settings["max_returned_rows"] == 7


def test_new_database_file_is_picked_up_by_reload(site: Site, gateway: RunningGateway) -> None:
    shutil.copy(site.tenants_dir / "alice" / "data" / "data.db",
                site.tenants_dir / "alice" / "data" / "second.db")
    gateway.cli("reload")
    databases = gateway.get("alice", "/-/databases.json").json()
    assert sorted(d["name"] for d in databases) == ["data", "second"]


def test_invalid_config_is_reported_and_the_running_one_kept(
    site: Site, gateway: RunningGateway
) -> None:
    before = gateway.pids()
    site.write_config(proxy={"retry_budget_s": "lots"})
    result = gateway.cli("reload", check=False)
    assert result.returncode == 1
    assert 'proxy.retry_budget_s: expected a number, got "lots"' in result.stderr
    gateway.signal(signal.SIGHUP)
    event = gateway.wait_for_event("reload_rejected")
    assert "expected a number" in event["error"]
    assert gateway.pids() == before
    assert gateway.get("alice", "/data/items.json").status_code == 200


def test_invalid_tenant_folder_is_reported_and_nothing_changes(
    site: Site, gateway: RunningGateway
) -> None:
    (site.tenants_dir / "Bad_Name").mkdir()
    site.add_tenant("dave")
    result = gateway.cli("reload", check=False)
    assert result.returncode == 1
    assert "'Bad_Name' is not a valid tenant name" in result.stderr
    assert gateway.get("dave", "/").status_code == 404


def test_changed_paths_wait_for_a_restart_all_together(
    site: Site, gateway: RunningGateway
) -> None:
    """1. gateway.toml points tenants_dir at another folder, holding carol. 2. reload says
    [paths] needs a restart, and applies none of it: alice and bob keep serving from the
    running folder, carol does not appear; `tenant restart` still reads the running folder."""
    before = gateway.pids()
    (site.root / "elsewhere").mkdir()
    elsewhere = Site(site.root / "elsewhere")
    elsewhere.add_tenant("carol")
    site.write_config(paths={"tenants_dir": str(elsewhere.tenants_dir)})
    plan = json.loads(gateway.cli("reload", "--json").stdout)
    assert (plan["needs_restart"], plan["added"], plan["removed"]) == (["paths"], [], [])
    assert gateway.pids() == before
    assert gateway.get("carol", "/").status_code == 404
    gateway.cli("tenant", "restart", "alice")
    assert gateway.get("alice", "/data/items.json").status_code == 200
    assert gateway.status()["config"] == str(site.config_path)


def test_plan_reload_is_pure(site: Site) -> None:
    site.add_tenant("alice")
    site.add_tenant("bob")
    old = load_config(site.config_path)
    (site.tenants_dir / "bob" / "tenant.toml").write_text("public = false\n")
    site.add_tenant("carol")
    shutil.rmtree(site.tenants_dir / "alice")
    site.write_config(proxy={"retry_budget_s": 3.0}, listen={"http_port": 8123})
    plan = plan_reload(old, load_config(site.config_path))
    assert plan.added == ("carol",)
    assert plan.removed == ("alice",)
    assert plan.changed == ("bob",)
    assert plan.needs_restart == ("listen",)


def _alive(pid: int) -> bool:
    from .conftest import pid_alive

    return pid_alive(pid)


def test_reload_reports_a_tenant_that_fails_to_start(site: Site, gateway: RunningGateway) -> None:
    """Steps: break alice's metadata.json (changed) and add carol with the same problem (added);
    `gateway reload` waits for both, names each with its reason and exits 1; alice's old
    process keeps serving and `status` shows her last failure; fixing it reloads cleanly."""
    before = gateway.pids()
    (site.tenants_dir / "alice" / "metadata.json").write_text("{not json")
    site.add_tenant("carol")
    (site.tenants_dir / "carol" / "metadata.json").write_text("{not json")
    result = gateway.cli("reload", check=False)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:4] == ["added: carol", "removed: -", "changed: alice", "needs_restart: -"]
    assert lines[4].startswith("alice: failed: tenant 'alice' exited with status 1: ")
    assert lines[5].startswith("carol: failed: tenant 'carol' exited with status 1: ")
    assert result.stderr == "Error: 2 tenants failed to start: alice, carol\n"
    assert gateway.pids()["alice"] == before["alice"]
    assert gateway.get("alice", "/data/items.json").status_code == 200
    alice = next(t for t in gateway.status()["tenants"] if t["name"] == "alice")
    assert alice["state"] == "running"
    assert alice["last_failure"]["reason"] == lines[4].removeprefix("alice: failed: ")
    text = gateway.cli("status").stdout
    assert f"last failure {time.strftime('%Y-%m-%d', time.gmtime())}" in text
    event = gateway.wait_for_event("reload_failed")
    assert sorted(event["failed"]) == ["alice", "carol"]

    (site.tenants_dir / "alice" / "metadata.json").write_text('{"title": "Alice"}')
    (site.tenants_dir / "carol" / "metadata.json").unlink()
    result = gateway.cli("reload")
    assert result.stdout.splitlines()[3:] == [
        "needs_restart: -", "alice: serving", "carol: serving"
    ]
    assert gateway.get("carol", "/data/items.json").status_code == 200
    assert gateway.get("alice", "/-/metadata.json").json()["title"] == "Alice"

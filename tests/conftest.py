"""Fixtures: a site on disk (gateway.toml + tenants/), and a real gateway process serving it.

Everything is real: `gateway serve` runs as a subprocess on a free port, tenants are real
Datasette processes (sandboxed when the tests run as root), and requests go over TCP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlite_utils

from gateway import control, spares
from gateway.config import load_config

BIN = Path(sys.executable).parent
IS_ROOT = os.geteuid() == 0
# Tenant uids for the test sites. Two test runs at once on one machine (two checkouts) must not
# share tenant users: RLIMIT_NPROC and process counts are per user.
UID_BASE = int(os.environ.get("GATEWAY_TEST_UID_BASE", "20000"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("root") and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root (tenant users and bubblewrap)"))


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for test configs: scalars, lists and nested tables."""
    lines = [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(f"\n[{prefix}{key}]")
            lines.append(to_toml(value, f"{prefix}{key}."))
    return "\n".join(lines)


class Site:
    """A gateway's files in a world-traversable temporary folder (tenant users must reach it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tenants_dir = root / "tenants"
        self.tenants_dir.mkdir()
        self.config_path = root / "gateway.toml"
        self.settings: dict[str, Any] = {
            "domain": "gw.test",
            "listen": {"host": "127.0.0.1", "http_port": 0},
            "paths": {"run_dir": str(root / "run")},
            "proxy": {"retry_budget_s": 10.0},
            "sandbox": {"uid_min": UID_BASE, "uid_max": UID_BASE + 999},
            "metrics": {"listen": "127.0.0.1:0"},  # not 9464: test gateways run side by side
        }
        self.write_config()

    def write_config(self, **overrides: Any) -> Path:
        for key, value in overrides.items():
            if isinstance(value, dict):
                self.settings.setdefault(key, {}).update(value)
            else:
                self.settings[key] = value
        self.config_path.write_text(to_toml(self.settings) + "\n")
        return self.config_path

    def add_tenant(
        self,
        name: str,
        *,
        public: bool = True,
        settings: str = "",
        tables: dict[str, list[dict[str, Any]]] | None = None,
        database: str = "data.db",
    ) -> Path:
        directory = self.tenants_dir / name
        (directory / "data").mkdir(parents=True)
        (directory / "tenant.toml").write_text(f"public = {toml_value(public)}\n{settings}\n")
        if tables is None:
            tables = {"items": [{"id": i, "name": f"item {i}"} for i in range(1, 21)]}
        if tables:
            db = sqlite_utils.Database(directory / "data" / database)
            for table, rows in tables.items():
                db[table].insert_all(rows, pk="id" if rows and "id" in rows[0] else None)
            db.close()
        return directory


@pytest.fixture
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield Site(root)
    finally:
        spares.remove_stale(root / "run")  # mounts a gateway killed mid-test left (spares.py)
        spares.release_root(root / "run")
        shutil.rmtree(root, ignore_errors=True)


class RunningGateway:
    """`gateway serve` in a subprocess, with its logs collected line by line."""

    def __init__(self, site: Site, wrapper: Sequence[str] = ()) -> None:
        """`wrapper`: a command that execs the rest (e.g. tests/docker_like.py ... --)."""
        self.site = site
        self.config = load_config(site.config_path)  # as started: later edits may break it
        self.events: list[dict[str, Any]] = []
        self.access: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [*wrapper, str(BIN / "gateway"), "--config", str(site.config_path), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.process.pid
        self.tenant_pids: set[int] = set()
        self._collectors = [
            threading.Thread(target=self._collect, args=(stream, sink), daemon=True)
            for stream, sink in ((self.process.stdout, self.access),
                                 (self.process.stderr, self.events))
        ]
        for collector in self._collectors:
            collector.start()
        listening = self.wait_for_event("gateway_listening")
        self.port = int(listening["http"].rpartition(":")[2])
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def _collect(self, stream: Any, sink: list[dict[str, Any]]) -> None:
        with stream:
            for raw in stream:
                try:
                    sink.append(json.loads(raw))
                except ValueError:
                    sink.append({"event": "unparsed", "line": raw.decode(errors="replace")})

    def wait_for_event(self, name: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.process.poll() is not None and not self._has(name, fields):
                raise AssertionError(f"gateway exited ({self.process.returncode}) before {name}:"
                                     f" {self.events[-5:]}")
            return self._has(name, fields)

        return wait_until(find, timeout, message=f"event {name} {fields}")  # type: ignore[no-any-return]

    def _has(self, name: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        for event in list(self.events):
            if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    def host(self, tenant: str | None) -> str:
        domain = self.site.settings["domain"]
        return f"{tenant}.{domain}" if tenant else domain

    def get(self, tenant: str | None, path: str = "/", **kwargs: Any) -> httpx.Response:
        headers = {"host": self.host(tenant), **kwargs.pop("headers", {})}
        return self.client.get(path, headers=headers, **kwargs)

    def request(self, method: str, tenant: str | None, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"host": self.host(tenant), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = control.call(self.config, "GET", "/status")
        self.tenant_pids.update(t["pid"] for t in status["tenants"] if t["pid"])
        return status

    @property
    def worker_pid(self) -> int:
        """The process that serves requests (`gateway serve` itself is the master)."""
        return int(self.status()["worker_pid"])

    def pids(self) -> dict[str, int]:
        """Each tenant's current process id, by name (0 while it has none)."""
        return {t["name"]: t["pid"] for t in self.status()["tenants"]}

    def tenant(self, name: str) -> dict[str, Any]:
        return next(t for t in self.status()["tenants"] if t["name"] == name)

    def wait_running(self, *names: str, timeout: float = 30.0) -> None:
        for name in names:
            wait_until(lambda name=name: self.tenant(name)["state"] == "running", timeout,
                       message=f"tenant {name} running")

    def cli(self, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "gateway"), "--config", str(self.site.config_path), *args],
            capture_output=True, text=True, timeout=120, input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} failed: {result.stderr}")
        return result

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit status. Checks that no tenant process is left."""
        with contextlib.suppress(Exception):
            self.status()
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the gateway did not stop within 30 s of SIGTERM") from None
        for collector in self._collectors:
            collector.join(10)
        assert_gone(self.tenant_pids)
        return code


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # The second: the process was reaped between open() and read().
        return False


def assert_gone(pids: set[int], timeout: float = 10.0) -> None:
    wait_until(lambda: not [p for p in pids if pid_alive(p)], timeout,
               message=f"tenant processes {sorted(pids)} to exit")


@pytest.fixture
def start_gateway(site: Site) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(wrapper: Sequence[str] = ()) -> RunningGateway:
        gateway = RunningGateway(site, wrapper)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.stop()


@pytest.fixture
def alice_and_bob(site: Site, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway serving two plain tenants, both running."""
    site.add_tenant("alice")
    site.add_tenant("bob")
    gateway = start_gateway()
    gateway.wait_running("alice", "bob")
    return gateway


# --- a real browser: Playwright driving Debian's headless Chromium ---------------------------

CHROMIUM = "/usr/bin/chromium"
# --no-sandbox: the tests run as root. The rest keep Chromium from phoning home (no network
# here but the package mirrors) and from doing background work on a shared CPU.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--disable-default-apps", "--disable-sync", "--no-first-run", "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Chromium is not installed (`make test` installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Any, apex: str, email: str, password: str, then: str | None = None) -> None:
    """Sign in on the apex's page, and wait to land on `then` (default: the apex's home)."""
    page.goto(f"{apex}/-/login" + (f"?next={then}" if then else ""))
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(then or f"{apex}/")


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[Any]:
    """A real 3-member etcd cluster on loopback, shared by the session's cluster tests."""
    from .etcd_cluster import EtcdCluster

    cluster = EtcdCluster()
    try:
        yield cluster
    finally:
        cluster.close()

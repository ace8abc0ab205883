"""The sandbox under Docker's default confinement, reproduced by tests/docker_like.py.

Docker's default seccomp profile stops bubblewrap from creating namespaces, so the gateway must
fall back to `uid` isolation, say so once, show it in `gateway status`, and still run each
tenant as its own uid without capabilities; `sandbox.isolation = "required"` refuses instead.
(tests/image runs the same checks in the image itself, with Docker's masked /proc paths too.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import BIN, RunningGateway, Site

pytestmark = pytest.mark.root

DOCKER_LIKE = Path(__file__).with_name("docker_like.py")
DOCKER_DEFAULTS = ["/usr/bin/python3", str(DOCKER_LIKE), "--docker-caps", "--docker-seccomp", "--"]
SECCOMP_UNCONFINED = ["/usr/bin/python3", str(DOCKER_LIKE), "--docker-caps", "--"]
NO_NAMESPACES = (
    "bubblewrap cannot sandbox here (bwrap: No permissions to create new namespace, likely"
    " because the kernel does not allow non-privileged user namespaces; in Docker: see README,"
    " Deploy)"
)
PROBE = (
    "import json; from gateway import sandbox;"
    " print(json.dumps(sandbox.probe_isolation('auto', 20000).describe()))"
)


def probe(wrapper: list[str]) -> dict[str, object]:
    result = subprocess.run([*wrapper, sys.executable, "-c", PROBE], capture_output=True,
                            text=True, check=True, timeout=60)
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_probe_under_docker_defaults_falls_back_to_uid() -> None:
    assert probe(DOCKER_DEFAULTS) == {
        "level": "uid",
        "protections": ["own uid/gid", "no groups or capabilities", "rlimits",
                        "0700 tenant folders"],
        "missing": ["private filesystem view", "no network", "own PID namespace"],
        "reason": NO_NAMESPACES,
    }


def test_probe_without_seccomp_needs_no_extra_capability() -> None:
    """Docker's default capabilities are enough: bwrap runs as the tenant in a user namespace."""
    assert probe(SECCOMP_UNCONFINED)["level"] == "full"


def test_gateway_under_docker_defaults(
    site: Site, start_gateway: Callable[..., RunningGateway]
) -> None:
    """1. `gateway serve` under Docker's default capabilities and seccomp rules.
    2. One isolation_reduced warning, and `gateway status` says uid and what is missing.
    3. The tenant serves, as its own uid, with no groups, no capabilities and no-new-privs.
    4. SIGHUP reloads without repeating the warning. 5. SIGTERM: exit 0, no tenant left.
    """
    site.add_tenant("alice")
    gateway = start_gateway(DOCKER_DEFAULTS)
    gateway.wait_running("alice")
    assert gateway.get("alice", "/data/items.json?_shape=array&_size=1").json() == [
        {"id": 1, "name": "item 1"}
    ]
    status = gateway.cli("status").stdout
    assert status.splitlines()[2:4] == [
        "isolation  uid: own uid/gid, no groups or capabilities, rlimits, 0700 tenant folders",
        "           not available: private filesystem view, no network, own PID namespace"
        f" ({NO_NAMESPACES})",
    ]
    alice = gateway.tenant("alice")
    credentials = dict(line.split(":\t", 1) for line in
                       Path(f"/proc/{alice['pid']}/status").read_text().splitlines())
    assert credentials["Uid"].split() == [str(alice["uid"])] * 4
    assert credentials["Groups"].strip() == ""
    assert int(credentials["CapEff"], 16) == int(credentials["CapBnd"], 16) == 0
    assert credentials["NoNewPrivs"] == "1"

    gateway.signal(signal.SIGHUP)
    gateway.wait_for_event("reload_planned")
    reduced = [e for e in gateway.events if e["event"] == "isolation_reduced"]
    assert [(e["level"], e["isolation"]["level"]) for e in reduced] == [("warning", "uid")]
    assert gateway.stop() == 0


def test_required_isolation_refuses_to_start_under_docker_defaults(site: Site) -> None:
    site.write_config(sandbox={"isolation": "required"})
    result = subprocess.run(
        [*DOCKER_DEFAULTS, str(BIN / "gateway"), "--config", str(site.config_path), "serve"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    refusal = f"Error: gateway.toml: sandbox.isolation: required, but {NO_NAMESPACES}\n"
    assert result.stderr.splitlines(keepends=True).count(refusal) == 1  # said once, not retried
    assert '"event": "worker_start_failed"' in result.stderr

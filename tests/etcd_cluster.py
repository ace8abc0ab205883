"""A real 3-member etcd cluster on loopback (Debian's etcd-server), for the cluster tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EtcdMember:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.client_url = f"http://127.0.0.1:{free_port()}"
        self.peer_url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, initial_cluster: str, token: str) -> None:
        log = open(self.folder / f"{self.name}.log", "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            [ETCD, "--name", self.name, "--data-dir", str(self.folder / self.name),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", token, "--heartbeat-interval", "50",
             "--election-timeout", "500"],
            stdout=log, stderr=log,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None


class EtcdCluster:
    """Three members, each its own ports and data folder, removed by `close`. With `snapshot`
    (`etcdctl snapshot save`), a new cluster restored from it, as an operator would
    (`etcdctl snapshot restore` into each member's data folder, then start them)."""

    def __init__(self, size: int = 3, snapshot: Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="gateway-etcd-"))
        self.members = [EtcdMember(f"e{i}", self.folder) for i in range(1, size + 1)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            if snapshot is not None:
                subprocess.run(
                    [ETCDCTL, "snapshot", "restore", str(snapshot), "--name", member.name,
                     "--data-dir", str(self.folder / member.name), "--initial-cluster", initial,
                     "--initial-cluster-token", self.folder.name,
                     "--initial-advertise-peer-urls", member.peer_url],
                    env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, check=True)
            member.start(initial, token=self.folder.name)
        self.wait_healthy()

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(httpx.get(url + "/health", timeout=1).json().get("health") == "true"
                       for url in self.endpoints):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy; logs in {self.folder}")

    def snapshot(self, path: Path) -> None:
        """`etcdctl snapshot save` from one member (a consistent copy of the whole store)."""
        subprocess.run([ETCDCTL, "--endpoints", self.endpoints[0], "snapshot", "save", str(path)],
                       env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, check=True)

    def close(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

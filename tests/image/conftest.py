"""Containers of the built image, run the way Docker runs them, on a machine without Docker.

`buildah from` gives the image's root filesystem (once per session); each container is an
overlay of it, in which tests/docker_like.py runs the image's ENTRYPOINT + CMD as PID 1 of its
own mount, PID and network namespaces, with all or part of Docker's default confinement.
`Container.exec` is `docker exec` (nsenter into the namespaces, in the image's WorkingDir with
its Env), `Container.kill` is `docker kill -s`.

The image is `gateway:latest` (what `make image` builds), or $GATEWAY_IMAGE.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import wait_until

IMAGE = os.environ.get("GATEWAY_IMAGE", "gateway:latest")
DOCKER_LIKE = Path(__file__).parent.parent / "docker_like.py"

# `docker run` options -> what tests/docker_like.py reproduces of them (AppArmor is not
# reproduced: this machine has none).
CONFINEMENTS = {
    "docker defaults": ("--docker-caps", "--docker-seccomp", "--docker-masks"),
    "seccomp=unconfined": ("--docker-caps", "--docker-masks"),
    "seccomp=unconfined systempaths=unconfined": ("--docker-caps",),
}


def buildah(*args: str) -> str:
    result = subprocess.run(["buildah", "--storage-driver", "vfs", *args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.fixture(scope="session")
def image_config() -> dict[str, Any]:
    """The image's Docker config (Entrypoint, Cmd, Env, Volumes, Healthcheck, ...)."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run `make image` first")
    try:
        inspected = json.loads(buildah("inspect", "--type", "image", IMAGE))
    except AssertionError as exc:
        pytest.fail(f"no image {IMAGE} ({exc}): build it with `make image`")
    config: dict[str, Any] = inspected["Docker"]["config"]
    return config


@pytest.fixture(scope="session")
def image_rootfs(image_config: dict[str, Any]) -> Iterator[Path]:
    """The image's root filesystem; containers never write to it (see Container)."""
    name = buildah("from", "--pull=never", IMAGE)
    try:
        yield Path(buildah("mount", name))
    finally:
        buildah("rm", name)


class Container:
    def __init__(self, config: dict[str, Any], image: Path, scratch: Path) -> None:
        self.config = config
        self.image = image
        self.rootfs = scratch / "rootfs"  # an overlay: the image below, rootfs.upper above
        self.rootfs.mkdir()
        self.output = scratch / "container.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0  # PID 1 of the container, as the host sees it

    def start(self, confinement: str, volumes: dict[str, Path], network: str = "private"
              ) -> None:
        """`docker run` with the image's own command, `volumes` as {container path: host dir};
        `network="host"` is `--network host` (the host's loopback: servers the test runs)."""
        options = [*CONFINEMENTS[confinement], f"--rootfs={self.rootfs}", f"--image={self.image}",
                   f"--workdir={self.config['WorkingDir'] or '/'}"]
        options += [f"--volume={host}:{path}" for path, host in volumes.items()]
        options += [f"--env={item}" for item in self.config["Env"]]
        command = [*(self.config["Entrypoint"] or []), *(self.config["Cmd"] or [])]
        with open(self.output, "wb") as output:
            self.process = process = subprocess.Popen(
                ["unshare", "--mount", "--pid", *(["--net"] if network != "host" else []),
                 "--fork", "--kill-child", "--",
                 "/usr/bin/python3", str(DOCKER_LIKE), *options, "--", *command],
                stdout=output, stderr=subprocess.STDOUT,
            )
        self.init_pid = int(wait_until(lambda: self._children(process),
                                       message="the container's PID 1")[0])

    def _children(self, process: subprocess.Popen[bytes]) -> list[str]:
        if process.poll() is not None:
            raise AssertionError(f"the container exited ({process.returncode}):\n"
                                 + self.output.read_text(errors="replace")[-3000:])
        return children(process.pid)

    def events(self) -> list[dict[str, Any]]:
        """The gateway's event log (JSON lines); access log lines have no "event"."""
        events = []
        for line in self.output.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "event" in entry:
                    events.append(entry)
        return events

    def wait_for_event(self, name: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the container exited ({self.process.returncode}):\n"
                                     + self.output.read_text(errors="replace")[-3000:])
            return next((e for e in self.events() if e["event"] == name
                         and all(e.get(key) == value for key, value in fields.items())), None)

        return wait_until(find, timeout,  # type: ignore[no-any-return]
                          message=f"event {name} {fields}")

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker exec CONTAINER COMMAND...`"""
        result = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--mount", "--pid", "--net", "--root",
             "--wd", "--", "/usr/bin/env", "-i", *self.config["Env"], *command],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"exec {' '.join(command)} failed ({result.returncode}):"
                                 f" {result.stdout}{result.stderr}")
        return result

    def get(self, host: str, path: str) -> tuple[int, str]:
        """GET http://127.0.0.1:80<path> with Host: <host>, from inside the container's network."""
        result = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--net", "--", "curl", "-s", "-m", "30",
             "-H", f"Host: {host}", "-w", "\n%{http_code}", f"http://127.0.0.1:80{path}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        body, _, status = result.stdout.rpartition("\n")
        return int(status or 0), body

    def kill(self, sig: signal.Signals) -> None:
        """`docker kill -s SIG`: the signal goes to the container's PID 1."""
        os.kill(self.init_pid, sig)

    def processes(self) -> list[int]:
        """Host pids of every process in the container's PID namespace."""
        try:
            namespace = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except FileNotFoundError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                        pids.append(int(entry))
        return pids

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)  # PID 1 gone: the kernel ends the rest
            self.process.wait(30)


def children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []


@pytest.fixture
def container(
    image_config: dict[str, Any], image_rootfs: Path
) -> Iterator[Callable[[], Container]]:
    made: list[Container] = []
    scratch = Path(tempfile.mkdtemp(prefix="gw-container-", dir="/tmp"))

    def make() -> Container:
        folder = scratch / str(len(made))
        folder.mkdir()
        made.append(Container(image_config, image_rootfs, folder))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.remove()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def volume() -> Iterator[Callable[[], Path]]:
    """Fresh, empty host folders to mount as volumes (root-owned 0755, as Docker makes them)."""
    folders: list[Path] = []

    def make() -> Path:
        folders.append(Path(tempfile.mkdtemp(prefix="gw-volume-", dir="/tmp")))
        os.chmod(folders[-1], 0o755)
        return folders[-1]

    yield make
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


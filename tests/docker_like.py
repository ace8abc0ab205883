"""Run a command confined the way Docker confines a container, on a machine without Docker.

    /usr/bin/python3 tests/docker_like.py [--docker-caps] [--docker-seccomp] [--docker-masks]
        [--rootfs DIR [--image DIR] [--volume HOST:PATH]... [--workdir PATH] [--env NAME=VALUE]...]
        -- COMMAND...

Without --rootfs the command runs here, with only the chosen confinement. With --rootfs this
process must be PID 1 of fresh mount, PID and network namespaces (`unshare --mount --pid --net
--fork`). It mounts /proc, /dev, /sys and the volumes into DIR and pivots into it as runc does;
with --image, DIR is first made an overlay of that image root filesystem (read-only) and
DIR.upper, as Docker's overlay2 storage does. A chroot would not do: the kernel refuses user
namespaces to chrooted processes, so bubblewrap would fail for a reason Docker does not have.
Then it confines itself and execs COMMAND.

What each option reproduces of `docker run` with no --security-opt and no --cap-add:

--docker-caps     Docker's 14 default capabilities (no CAP_SYS_ADMIN), nothing inheritable.
--docker-seccomp  the namespace rules of Docker's default seccomp profile: clone() with any
                  CLONE_NEW* flag, mount(), umount2(), pivot_root(), setns() and the new mount
                  API fail with EPERM, and clone3() with ENOSYS (so that libc falls back to
                  clone). Only those rules: the real profile also denies other syscalls that
                  neither the gateway nor its tenants use.
--docker-masks    Docker's masked and read-only /proc and /sys paths (`systempaths`). A new /proc
                  can only be mounted in a user namespace where /proc is fully visible, so these
                  alone stop bubblewrap's `--proc`.

Needs root, util-linux, iproute2 and python3-seccomp (Debian's, hence /usr/bin/python3).
Test tooling only.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import subprocess
import sys

import seccomp  # type: ignore[import-not-found]

DOCKER_CAPABILITIES = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
MOUNT_SYSCALLS = (
    "mount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
)
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

SYS_PIVOT_ROOT = 155  # x86_64
MNT_DETACH = 2
libc = ctypes.CDLL(None, use_errno=True)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def setup_rootfs(rootfs: str, image: str | None, volumes: list[str], masks: bool) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # Docker's netns has it up
    mount("--make-rprivate", "/")
    if image:  # as Docker's overlay2: the image read-only below, the container's writes beside
        upper, work = f"{rootfs}.upper", f"{rootfs}.work"
        os.makedirs(upper, exist_ok=True)
        os.makedirs(work, exist_ok=True)
        mount("-t", "overlay", "-o", f"lowerdir={image},upperdir={upper},workdir={work}",
              "overlay", rootfs)
    else:
        mount("--bind", rootfs, rootfs)  # pivot_root needs a mount point
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{rootfs}/proc")
    mount("--rbind", "/dev", f"{rootfs}/dev")
    mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{rootfs}/sys")
    for volume in volumes:
        source, _, target = volume.partition(":")
        if os.path.isdir(source):
            os.makedirs(f"{rootfs}{target}", exist_ok=True)
        elif not os.path.exists(f"{rootfs}{target}"):  # a file over a file, as Docker's -v
            open(f"{rootfs}{target}", "a").close()
        mount("--bind", source, f"{rootfs}{target}")
    with open(f"{rootfs}/etc/hosts", "w") as hosts:  # what Docker writes there
        hosts.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
    if masks:
        mask_system_paths(rootfs)
    pivot_into(rootfs)


def mask_system_paths(rootfs: str) -> None:
    for path in MASKED_PATHS:
        target = f"{rootfs}{path}"
        if os.path.isdir(target):
            mount("-t", "tmpfs", "-o", "ro,size=0", "tmpfs", target)
        elif os.path.exists(target):
            mount("--bind", "/dev/null", target)
    for path in READONLY_PATHS:
        target = f"{rootfs}{path}"
        if os.path.exists(target):
            mount("--bind", target, target)
            mount("-o", "remount,bind,ro", target)


def pivot_into(rootfs: str) -> None:
    """runc's way in: pivot_root(".", ".") stacks the old root on the new; detach it."""
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    os.chdir(rootfs)
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    os.fchdir(old_root)
    os.close(old_root)
    if libc.umount2(b".", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount2")
    os.chdir("/")


def load_docker_seccomp_rules() -> None:
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                       seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for name in MOUNT_SYSCALLS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    rules.load()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docker-caps", action="store_true")
    parser.add_argument("--docker-seccomp", action="store_true")
    parser.add_argument("--docker-masks", action="store_true")
    parser.add_argument("--rootfs")
    parser.add_argument("--image")
    parser.add_argument("--volume", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.rootfs:
        setup_rootfs(args.rootfs, args.image, args.volume, args.docker_masks)
        os.chdir(args.workdir)
        env = dict(item.partition("=")[::2] for item in args.env)
    command = args.command
    if args.docker_caps:
        keep = ",".join(f"+{cap}" for cap in DOCKER_CAPABILITIES)
        command = ["setpriv", f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--", *command]
    if args.docker_seccomp:
        load_docker_seccomp_rules()
    sys.stdout.flush()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()

"""A libvirtd of our own for integration tests and `vfiotask bench libvirt`, put back as found.

Test and benchmark support, not library API: it starts and stops daemons and rewrites qemu.conf.

Hosts without systemd (containers, this project's VMs) have no service to start; the hook is
only read by libvirtd at start-up and memory_backing_dir only from qemu.conf, so both must be in
place before the daemon starts.  Everything changed is recorded when it is changed and undone in
reverse on exit, also when the body fails: qemu.conf, the hook, a hugetlbfs mount, the RAM
directory, the daemons (stopped by the PIDs we started, never by name), guests left defined.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType

from vfiotask.errors import HostStateError
from vfiotask.integrations.libvirt.hookinstall import HOOKS_DIR, hook_path, install
from vfiotask.integrations.libvirt.paths import QEMU_CONF

URI = "qemu:///system"
HUGEPAGES_MOUNT = Path("/dev/hugepages")
PID_DIR = Path("/run")
MARKER = "# added by vfiotask for a private libvirtd; removed when it stops"


def missing_tools() -> list[str]:
    return [tool for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64") if shutil.which(tool) is None]


def _running(name: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def virsh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise HostStateError(f"virsh {' '.join(args)} failed: {result.stderr.strip()}", hint="see libvirtd's log")
    return result


class PrivateLibvirt:
    """Configure, start, and on exit stop and restore a libvirtd whose guests use our hook.

    `backing_dir`: memory_backing_dir (default: a fresh directory on /dev/shm, a tmpfs); with
    `set_backing_dir=False` qemu.conf is left as it is (a test of `setup memory-backing` set it).
    `guest_prefix`: guests whose names start with it are destroyed and undefined on exit.
    With `install_hook=False` the hook is left to the caller (a test installing it as a user does),
    and still put back as found on exit.
    """

    def __init__(self, *, guest_prefix: str = "vfiotask-", backing_dir: Path | None = None,
                 qemu_conf: Path = QEMU_CONF, hooks_dir: Path = HOOKS_DIR, hugetlbfs: bool = True,
                 set_backing_dir: bool = True, install_hook: bool = True) -> None:
        self.guest_prefix = guest_prefix
        self.backing_dir = backing_dir or Path("/dev/shm") / f"vfiotask-ram-{uuid.uuid4().hex[:8]}"
        self.qemu_conf = qemu_conf
        self.hooks_dir = hooks_dir
        self.hugetlbfs = hugetlbfs
        self.set_backing_dir = set_backing_dir
        self.install_hook = install_hook
        self.pids: dict[str, int] = {}
        self._undo: list[tuple[str, Callable[[], object]]] = []

    # -- set-up ----------------------------------------------------------------------------------

    def __enter__(self) -> PrivateLibvirt:
        if os.geteuid() != 0:
            raise HostStateError("a private libvirtd needs root", hint="run as root")
        missing = missing_tools()
        if missing:
            raise HostStateError(f"missing {', '.join(missing)}",
                                 hint="apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86")
        running = _running("libvirtd")
        if running:
            raise HostStateError(f"libvirtd is already running (pid {running[0]})",
                                 hint="stop it first; a private one is started with our configuration")
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self) -> None:
        if self.set_backing_dir:
            self._set_backing_dir()
        self._install_hook()
        self._start()

    def _set_backing_dir(self) -> None:
        if not self.backing_dir.exists():
            self.backing_dir.mkdir(mode=0o755, parents=True)
            self._undo.append(("remove the RAM directory", lambda: shutil.rmtree(self.backing_dir, True)))
        saved = self.qemu_conf.read_text() if self.qemu_conf.exists() else None
        self._undo.append(("restore qemu.conf", lambda: self._restore_file(self.qemu_conf, saved)))
        self.qemu_conf.write_text((saved or "") + f'\n{MARKER}\nmemory_backing_dir = "{self.backing_dir}"\n')

    def _install_hook(self) -> None:
        target = hook_path(self.hooks_dir)
        created = [p for p in (self.hooks_dir, target.parent) if not p.exists()]
        before = target.read_text() if target.exists() else None
        self._undo.append(("restore the hook", lambda: self._restore_hook(target, before, created)))
        if self.install_hook:
            install(self.hooks_dir)

    def _start(self) -> None:
        if self.hugetlbfs and not self._hugetlbfs_mounted():
            HUGEPAGES_MOUNT.mkdir(exist_ok=True)
            subprocess.run(["mount", "-t", "hugetlbfs", "none", str(HUGEPAGES_MOUNT)], check=True)
            self._undo.append(("unmount hugetlbfs", lambda: subprocess.run(["umount", str(HUGEPAGES_MOUNT)])))

        for daemon in ("virtlogd", "libvirtd"):
            if daemon == "virtlogd" and _running("virtlogd"):
                continue
            self._undo.append((f"stop {daemon}", self._start_daemon(daemon)))
        self._undo.append(("remove test guests", self.remove_guests))
        self._wait_ready()

    def _start_daemon(self, daemon: str) -> Callable[[], object]:
        """Start `daemon` in the background; returns what stops it again (by the PID it wrote)."""
        pidfile = PID_DIR / f"vfiotask-{daemon}.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run([daemon, "-d", "-p", str(pidfile)], check=True, timeout=60)
        pid = self._wait_pid(pidfile)
        self.pids[daemon] = pid
        return partial(self._stop, pid, pidfile)

    def restart(self) -> None:
        """Stop the libvirtd started here and start it again, as `systemctl restart libvirtd` does
        on a host with systemd: libvirtd reads qemu.conf and its hooks only when it starts."""
        (index,) = [i for i, (what, _action) in enumerate(self._undo) if what == "stop libvirtd"]
        self._undo[index][1]()
        # in the same place of the undo list: on exit the test guests are removed while it still runs
        self._undo[index] = ("stop libvirtd", self._start_daemon("libvirtd"))
        self._wait_ready()

    @staticmethod
    def _hugetlbfs_mounted() -> bool:
        from vfiotask.host.mounts import mounts

        return any(m.fstype == "hugetlbfs" and m.mountpoint == HUGEPAGES_MOUNT for m in mounts())

    @staticmethod
    def _wait_pid(pidfile: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(pidfile.read_text().strip())
            time.sleep(0.05)
        raise HostStateError(f"{pidfile} did not appear", hint="see the daemon's log")

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = virsh("list", "--all", check=False, timeout=timeout)
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            time.sleep(0.2)
        raise HostStateError(f"libvirtd did not answer: {last}", hint="see libvirtd's log")

    # -- use -------------------------------------------------------------------------------------

    def define(self, xml: str) -> None:
        path = self.backing_dir.parent / f".vfiotask-define-{uuid.uuid4().hex[:8]}.xml"
        path.write_text(xml)
        try:
            virsh("define", str(path))
        finally:
            path.unlink(missing_ok=True)

    def guests(self) -> list[str]:
        out = virsh("list", "--all", "--name", check=False).stdout
        return [n for n in (line.strip() for line in out.splitlines()) if n.startswith(self.guest_prefix)]

    def remove_guests(self) -> None:
        for name in self.guests():
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)

    # -- tear-down -------------------------------------------------------------------------------

    @staticmethod
    def _stop(pid: int, pidfile: Path, timeout: float = 30) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)

    @staticmethod
    def _restore_file(path: Path, text: str | None) -> None:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)

    @staticmethod
    def _restore_hook(target: Path, before: str | None, created: list[Path]) -> None:
        if before is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(before)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        errors = []
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except Exception as error:  # keep undoing the rest
                errors.append(f"{what}: {error}")
        if errors and kind is None:
            raise HostStateError("could not put the host back: " + "; ".join(errors), hint="fix it by hand")

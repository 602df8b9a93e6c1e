"""libvirtd and virtlogd inside the nested guest, with vfiotask installed as `make install` does.

The nested guest's root is this host's, read-only over 9p (init.sh); /tmp, /run and /dev/shm are
tmpfs.  libvirt, an installed vfiotask and its hook need more writable places:

- /etc: a tmpfs copy of the host's /etc, bind-mounted over it, without libvirt's hooks and guest
  definitions and without /etc/vfiotask: tests of other checkouts change the host's qemu.conf
  and config.toml while a guest runs, and the live 9p view would show their changes;
- /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt: fresh tmpfs with libvirt's directories,
  owned as Debian's package makes them (state, QEMU's logs, the capabilities cache);
- /opt, /usr/local: fresh tmpfs, where `make install` puts the venv, the command, the manual page
  and the completions (its unit goes to /etc/systemd/system, in the copy of /etc);
- /dev/hugepages: hugetlbfs of 2 MiB pages; /sys/kernel/tracing: tracefs, for `bench vfio-start`.

qemu.conf gets `memory_backing_dir` (hugetlbfs at /dev/hugepages/vfiotask or tmpfs at
/dev/shm/vfiotask) and `namespaces = []`: with libvirt's private /dev for QEMU, QEMU found no
/dev/vfio/N in this guest ("failed to open /dev/vfio/4"), whose programs run chrooted into the
host's root (init.sh); without it QEMU opens the guest's own /dev, as on a host without namespaces.

The installation is `make install`, unchanged, offline (PIP_NO_INDEX, PIP_FIND_LINKS at the
wheelhouse `make nested-kernels` prepares), in one of two places:

- `host` (what `make test` uses): the host ran it before the boot in a private mount namespace
  whose /opt, /usr/local and /etc/systemd are empty directories of the test's work dir, and
  packed what it installed in the results share (tests/nested/install.py); the same root
  filesystem, so the same paths and interpreter.  The guest unpacks it.  Under TCG the same
  `make install` took the guest 9 minutes once on this 2-CPU VM beside others' tests.
- `guest`: the guest runs it itself on a copy of the checkout (python -m
  tests.nested.measure_vfio_start, or VFIOTASK_NESTED_INSTALL=guest for the tests).

Then `vfiotask hook install` (the installed command), virtlogd and libvirtd started with pid files
(stopped by those pids, never by name), and qemu:///system answering.  `Lab.close()` stops the
daemons and unmounts in reverse; the guest powers off afterwards either way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

URI = "qemu:///system"
RESULTS = Path("/tmp/results")
INSTALL_ARCHIVE = RESULTS / "install.tar"  # written by tests/nested/install.py on the host
SOURCE_COPY = RESULTS / "src"  # the checkout's files, copied by the host, for `make install` in the guest
WHEELHOUSE_NAME = "wheelhouse"
VFIOTASK = "/usr/local/bin/vfiotask"
HUGETLBFS_ROOT = Path("/dev/hugepages")
BACKING = {"hugetlbfs": HUGETLBFS_ROOT / "vfiotask", "tmpfs": Path("/dev/shm/vfiotask")}
TRACEFS = Path("/sys/kernel/tracing")
WRITABLE = ("/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/opt", "/usr/local")
# libvirt's own directories under /var, as Debian's package makes them (owner, mode).
LIBVIRT_DIRS = {
    "/var/lib/libvirt/qemu": ("libvirt-qemu", 0o751),
    "/var/lib/libvirt/images": ("root", 0o711),
    "/var/lib/libvirt/boot": ("root", 0o711),
    "/var/log/libvirt/qemu": ("root", 0o700),
    "/var/cache/libvirt/qemu": ("libvirt-qemu", 0o750),
}
PID_DIR = Path("/run")


def run(*args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None,
        cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-3000:]}")
    return done


def virsh(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run("virsh", "-c", URI, *args, check=check, timeout=timeout)


def host_env() -> dict[str, str]:
    """The environment an administrator's shell would give the command: the guest checks' private
    VFIOTASK_STATE_DIR left out, so the command and the hook under libvirtd share /run/vfiotask."""
    return {key: value for key, value in os.environ.items() if not key.startswith("VFIOTASK_")}


@dataclass
class Lab:
    """The writable places, the installation and the daemons; `close()` undoes them in reverse."""

    checkout: Path
    backing: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    mounted: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # -- places ----------------------------------------------------------------------------------

    def mount_writable(self) -> None:
        # /etc: a copy, so that the host's tests changing its /etc (qemu.conf, config.toml) while the
        # guest runs do not reach the guest; libvirt's guests, hooks and autostarted networks left out.
        copy = Path("/tmp/etc")
        copy.mkdir(exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(copy))
        run("cp", "-a", "/etc/.", str(copy))
        for leftover in ("libvirt/hooks", "libvirt/qemu", "vfiotask"):
            shutil.rmtree(copy / leftover, ignore_errors=True)
        for empty in ("libvirt/hooks", "libvirt/qemu"):  # as libvirt's package makes them
            (copy / empty).mkdir(mode=0o755)
        run("mount", "--bind", str(copy), "/etc")
        self.mounted += [str(copy), "/etc"]
        for path in WRITABLE:
            run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)
            self.mounted.append(path)
        for path, (owner, mode) in LIBVIRT_DIRS.items():
            Path(path).mkdir(parents=True, exist_ok=True)
            shutil.chown(path, owner, owner)
            os.chmod(path, mode)
        run("mount", "-t", "tracefs", "nodev", str(TRACEFS))  # for bench vfio-start
        self.mounted.append(str(TRACEFS))
        HUGETLBFS_ROOT.mkdir(exist_ok=True)
        run("mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", str(HUGETLBFS_ROOT))
        self.mounted.append(str(HUGETLBFS_ROOT))
        for directory in BACKING.values():
            directory.mkdir(mode=0o755, exist_ok=True)

    # -- installation ----------------------------------------------------------------------------

    def install(self, where: str) -> None:
        began = time.monotonic()
        if where == "host":
            run("tar", "-xpf", str(INSTALL_ARCHIVE), "-C", "/")
        else:
            source = Path("/tmp/src")
            shutil.copytree(SOURCE_COPY, source, symlinks=True)
            env = {**host_env(), "PIP_NO_INDEX": "1",
                   "PIP_FIND_LINKS": str(self.checkout / "build" / "nested" / WHEELHOUSE_NAME)}
            run("make", "install", env=env, cwd=source, timeout=1800)
        self.timings["install_s"] = time.monotonic() - began
        run(VFIOTASK, "hook", "install", env=host_env())

    # -- daemons ---------------------------------------------------------------------------------

    def configure(self, backing: str) -> None:
        conf = Path("/etc/libvirt/qemu.conf")
        kept = [line for line in conf.read_text().splitlines()
                if not line.lstrip().startswith(("memory_backing_dir", "namespaces"))] if conf.exists() else []
        kept += [f'memory_backing_dir = "{BACKING[backing]}"', "namespaces = []"]
        conf.write_text("\n".join(kept) + "\n")
        self.backing = backing

    def start(self, backing: str) -> None:
        """Both daemons with qemu.conf naming `backing` ("hugetlbfs" or "tmpfs"); libvirtd reads
        it only at start-up, so it is restarted when the backing changes."""
        if self.pids.get("libvirtd") and self.backing == backing:
            return
        self._stop("libvirtd")
        self.configure(backing)
        began = time.monotonic()
        for daemon in ("virtlogd", "libvirtd"):
            if daemon in self.pids:
                continue
            pidfile = PID_DIR / f"{daemon}.pid"
            pidfile.unlink(missing_ok=True)
            run(daemon, "-d", "-p", str(pidfile), timeout=120)
            self.pids[daemon] = _wait_pid(pidfile)
        deadline = time.monotonic() + 600
        while True:
            done = virsh("list", "--all", check=False)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not answer: {done.stderr.strip()}")
            time.sleep(0.5)
        self.timings.setdefault("libvirtd_s", time.monotonic() - began)

    def _stop(self, daemon: str) -> None:
        pid = self.pids.pop(daemon, None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> None:
        for name in virsh("list", "--all", "--name", check=False).stdout.split():
            virsh("destroy", name, check=False)
            virsh("undefine", name, check=False)
        self._stop("libvirtd")
        self._stop("virtlogd")
        for path in reversed(self.mounted):
            run("umount", "-l", path, check=False)
        self.mounted.clear()


def install_mode() -> str:
    """`host` when the host left the installation's archive, `guest` when it left the sources."""
    return "host" if INSTALL_ARCHIVE.is_file() else "guest"


def install_missing() -> str | None:
    """Why vfiotask cannot be installed in this guest, or None (the host says why in install.missing)."""
    if INSTALL_ARCHIVE.is_file() or SOURCE_COPY.is_dir():
        return None
    note = RESULTS / "install.missing"
    return note.read_text().strip() if note.is_file() else "the host prepared no installation for the guest"


def _wait_pid(pidfile: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pidfile.read_text().strip())
        time.sleep(0.1)
    raise RuntimeError(f"{pidfile} did not appear")


@contextlib.contextmanager
def lab(checkout: Path, backing: str, install: str) -> Iterator[Lab]:
    """Everything above, for a `with` block; undone afterwards, also on failure."""
    made = Lab(checkout)
    try:
        made.mount_writable()
        made.install(install)
        made.start(backing)
        yield made
    finally:
        made.close()

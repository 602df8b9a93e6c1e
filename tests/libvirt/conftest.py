"""Running the hook as libvirtd does: argv, the XML on stdin, an environment of LC_ALL, PATH, HOME."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import REPO

HOOK = REPO / "hooks" / "qemu"

if TYPE_CHECKING:
    from vfiotask.integrations.bench.libvirtd import PrivateLibvirt


@dataclass
class HookHost:
    """A private memory_backing_dir on tmpfs, a qemu.conf naming it, and a private state dir."""

    backing_dir: Path
    conf: Path
    state: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "VFIOTASK_STATE_DIR": str(self.state), "VFIOTASK_LIBVIRT_QEMU_CONF": str(self.conf)}
        env.update(extra)
        return env

    def run(self, name: str, phase: str, subphase: str, xml: str | bytes | None,
            **extra: str) -> subprocess.CompletedProcess[bytes]:
        data = xml.encode() if isinstance(xml, str) else xml
        return subprocess.run(
            [sys.executable, str(HOOK), name, phase, subphase, "-"],
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            env=self.env(**extra),
            timeout=120,
        )

    def guest_dir(self, short_name: str) -> Path:
        return self.backing_dir / "libvirt" / "qemu" / short_name

    def journal(self) -> dict[str, object]:
        import json

        path = self.state / "libvirt.json"
        data = json.loads(path.read_text()) if path.exists() else {}  # a journal with nothing in it is no file
        return {"guests": {}, "staged": {}, **data}


@pytest.fixture
def hook_host(tmp_path: Path, root_only_dir: Path) -> Iterator[HookHost]:
    """qemu.conf (and a config.toml a test puts beside it) where only root can change them, as
    root demands of what it reads; the state dir is the test's own."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm tmpfs")
    backing = Path("/dev/shm") / f"vfiotask-test-{uuid.uuid4().hex[:8]}"
    backing.mkdir()
    conf = root_only_dir / "qemu.conf"
    conf.write_text(f'memory_backing_dir = "{backing}"\n')
    try:
        yield HookHost(backing, conf, tmp_path / "state")
    finally:
        shutil.rmtree(backing, ignore_errors=True)


def stderr_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vfiotask: ")
    return lines[0]


def file_blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def skip_without_libvirt() -> None:
    """Skip, with the reason, where a private libvirtd cannot run: no root, no /dev/kvm, no tools."""
    from tests.conftest import is_root
    from vfiotask.integrations.bench.libvirtd import missing_tools

    if not is_root():
        pytest.skip("needs root to run libvirtd")
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm")
    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())}")


# What `vfiotask setup memory-backing` changes on a host: the hugetlbfs mount, its unit, qemu.conf.
RECOMMENDED_MOUNT = Path("/dev/hugepages2M")
RECOMMENDED_UNIT = Path("/etc/systemd/system/dev-hugepages2M.mount")
UNIT_WANTS = Path("/etc/systemd/system/local-fs.target.wants")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def mounted(path: Path) -> bool:
    return any(f" {path} " in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


@contextmanager
def memory_backing_put_back() -> Iterator[None]:
    """qemu.conf, the mount unit, the hugetlbfs mount and setup's backup as they were, also on
    failure (what `setup memory-backing --undo` does when a test gets that far)."""
    conf = QEMU_CONF.read_text()
    backup = QEMU_CONF.with_name("qemu.conf.vfiotask-backup")
    backup_existed, wants_existed = backup.exists(), UNIT_WANTS.exists()
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(RECOMMENDED_MOUNT)], capture_output=True, check=False)
        QEMU_CONF.write_text(conf)
        RECOMMENDED_UNIT.unlink(missing_ok=True)
        (UNIT_WANTS / RECOMMENDED_UNIT.name).unlink(missing_ok=True)
        if not wants_existed:
            shutil.rmtree(UNIT_WANTS, ignore_errors=True)
        if not backup_existed:
            backup.unlink(missing_ok=True)
        if RECOMMENDED_MOUNT.is_dir() and not mounted(RECOMMENDED_MOUNT):
            RECOMMENDED_MOUNT.rmdir()


@contextmanager
def running_private_libvirt(**options: Any) -> Iterator[PrivateLibvirt]:
    """A private libvirtd for the block; the tests skip, saying why, when it cannot start (a
    failure inside the block is the test's own, not a skip)."""
    from vfiotask.errors import HostStateError
    from vfiotask.integrations.bench.libvirtd import PrivateLibvirt

    private = PrivateLibvirt(**options)
    try:
        private.__enter__()
    except HostStateError as exc:
        pytest.skip(f"cannot run a private libvirtd: {exc}")
    try:
        yield private
    finally:
        private.__exit__(None, None, None)

"""Small helpers for device-layer tests: fixture trees and regions to map."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO
from vfiotask.host import libc

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sysfs"
TREES = ("viable", "sibling", "bridge", "wide", "doctor")


def sysfs(tree: str) -> Path:
    return FIXTURES / tree / "sys"


def copy_tree(tree: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture host; returns its sys/ directory."""
    target = tmp_path / tree
    shutil.copytree(FIXTURES / tree, target, symlinks=True)
    return target / "sys"


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every file's content and every link's target under root, for byte-for-byte comparison."""
    found: dict[str, tuple[str, str]] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", path.read_bytes().hex())
            else:
                found[rel] = ("dir", "")
    return found


@contextmanager
def memfd_region(size: int) -> Iterator[int]:
    """A shared memfd mapping of `size` bytes; yields its address."""
    fd = os.memfd_create("vfiotask-test", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
        try:
            yield addr
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


@contextmanager
def group_held_elsewhere(group: int, sysfs_root: Path) -> Iterator[int]:
    """Another process holds `group` in a mock container until the block ends; yields its pid."""
    program = ("import sys; from pathlib import Path; from vfiotask.devices.mock import MockContainer;"
               f" c = MockContainer([{group}], sysfs_root=Path({str(sysfs_root)!r}));"
               " print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.communicate("")


def group_with_cdevs(tmp_path: Path, number: int, cdevs: dict[str, str]) -> Path:
    """A /sys with IOMMU group `number` whose devices (address: cdev name, "" for a device on
    no driver) are listed; those with a cdev are on vfio-pci."""
    for address, cdev in cdevs.items():
        device = tmp_path / "kernel" / "iommu_groups" / str(number) / "devices" / address
        device.mkdir(parents=True)
        if cdev:
            (device / "vfio-dev" / cdev).mkdir(parents=True)
            (device / "driver").symlink_to("../../../../bus/pci/drivers/vfio-pci")
    return tmp_path

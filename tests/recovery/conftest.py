"""What the recovery tests compare: the host's state, read from the kernel and the filesystem."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.libvirt.conftest import hook_host  # noqa: F401 - the same private memory_backing_dir

HUGEPAGES = Path("/sys/kernel/mm/hugepages")


def tree(root: Path) -> list[tuple[str, str, int]]:
    """Every name under `root` (files, directories, links), with its type and inode: what a kill may leave."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            info = os.lstat(Path(dirpath) / name)
            kind = "d" if Path(dirpath, name).is_dir() and not Path(dirpath, name).is_symlink() else "f"
            found.append((str(Path(dirpath, name).relative_to(root)), kind, info.st_ino))
    return sorted(found)


def pools() -> dict[str, int]:
    """nr_hugepages of every pool, global and per node, as sysfs shows it."""
    files = list(HUGEPAGES.glob("hugepages-*/nr_hugepages"))
    files += list(Path("/sys/devices/system/node").glob("node*/hugepages/hugepages-*/nr_hugepages"))
    return {str(path): int(path.read_text()) for path in files}


@pytest.fixture
def all_pools_restored(hugepage_pools: None) -> Iterator[None]:
    """The node pools too (the shared fixture restores the global ones), also when the test fails."""
    saved = {Path(path): value for path, value in pools().items() if "/node/" in path}
    try:
        yield
    finally:
        for path, value in saved.items():
            path.write_text(f"{value}\n")

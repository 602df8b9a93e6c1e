"""Regions ask for transparent hugepages, so later mappers of a populated file map it whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import private_mount, requires_root
from vfiotask.host import libc
from vfiotask.jobs.prefault import prefault
from vfiotask.memory import RegionSpec, open_region

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SIZE = 64 << 20


def _smaps_field(addr: int, field: str) -> int:
    """A kB field of /proc/self/smaps for the mapping that starts at `addr`, in bytes."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            inside = int(head.split("-")[0], 16) == addr
        elif inside and line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.fixture
def huge_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with private_mount(tmp_path / "huge-tmpfs", "tmpfs", "size=256M,huge=advise") as mountpoint:
        yield mountpoint


def _thp_available() -> bool:
    return THP.exists() and "[never]" not in THP.read_text()


@pytest.mark.skipif(not _thp_available(), reason="transparent hugepages are disabled on this kernel")
def test_anonymous_region_is_populated_with_huge_pages() -> None:
    with open_region(RegionSpec(size=SIZE, backing="anon")) as region:
        prefault(region, max_threads=1)
        assert _smaps_field(region.addr, "AnonHugePages") > 0


@requires_root
def test_file_on_huge_tmpfs_is_mapped_whole_by_the_next_mapper(huge_tmpfs: Path) -> None:
    path = huge_tmpfs / "guest.ram"
    with open_region(RegionSpec(size=SIZE, backing=str(path))) as region:
        prefault(region, max_threads=1)
        region.close(remove_created=False)
    # A later mapper that asks for nothing (like a process that only maps the file) gets PMD mappings.
    fd = os.open(path, os.O_RDWR)
    addr = libc.mmap(SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
    try:
        libc.madvise(addr, SIZE, libc.MADV_POPULATE_WRITE)
        assert _smaps_field(addr, "ShmemPmdMapped") == SIZE
    finally:
        libc.munmap(addr, SIZE)
        os.close(fd)
        path.unlink()


@requires_root
def test_huge_pages_can_be_declined(huge_tmpfs: Path) -> None:
    spec = RegionSpec(size=SIZE, backing=str(huge_tmpfs / "small.ram"), transparent_hugepages=False)
    with open_region(spec) as region:
        prefault(region, max_threads=1)
        assert _smaps_field(region.addr, "ShmemPmdMapped") == 0

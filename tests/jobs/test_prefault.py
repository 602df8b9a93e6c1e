"""The prefault job, against the real kernel: pages populated, and given back exactly on failure."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiotask.engine import HelperKind
from vfiotask.errors import TaskFailed, UsageError
from vfiotask.host import libc
from vfiotask.host.hugepages import HugepagePools
from vfiotask.jobs import prefault as prefault_module
from vfiotask.jobs.prefault import _Releaser, prefault
from vfiotask.memory.region import Region, RegionSpec, open_region

MiB = 1 << 20
SIZE = 32 * MiB
MIN_CHUNK = 4 * MiB
# Failures are injected at every chunk, so the count must not depend on how many CPUs are idle:
# a chunk is about a quarter of a thread's share but never below the minimum, so a size of
# 4 minimum chunks is 4 chunks whether 1, 2 or more threads run.
STEADY_CHUNK = SIZE // 4
STEADY_CHUNKS = 4



def resident(region: Region) -> int:
    """Bytes of the region resident in this process's page tables (mincore)."""
    pages = region.size // region.page_size
    vec = ctypes.create_string_buffer(pages)
    libc.mincore(region.addr, region.size, vec)
    return sum(b & 1 for b in vec.raw) * region.page_size


def populated(region: Region) -> int:
    return region.allocated_bytes() if region.shared else resident(region)


def test_a_steady_size_is_the_same_chunks_on_any_number_of_threads() -> None:
    for threads in (1, 2, 4):
        with open_region(RegionSpec(size=SIZE, backing="memfd")) as region:
            report = prefault(region, min_chunk=STEADY_CHUNK, max_threads=threads)
            assert report.chunks == STEADY_CHUNKS


@pytest.mark.parametrize("backing", ["anon", "memfd", "file"])
def test_populates_every_page(backing: str, shm_dir: Path) -> None:
    path = str(shm_dir / "guest.ram") if backing == "file" else backing
    with open_region(RegionSpec(size=SIZE, backing=path)) as region:
        assert populated(region) == 0
        report = prefault(region, min_chunk=MIN_CHUNK, max_threads=2)
        assert populated(region) == SIZE
        assert (report.bytes, report.page_size, report.method) == (SIZE, 4096, "populate_write")
        assert report.chunks >= 2 and report.threads >= 1


@pytest.mark.parametrize("backing", ["anon", "memfd", "file"])
def test_failure_at_each_chunk_leaves_nothing_populated_or_created(
    backing: str, shm_dir: Path, inject_faults: Callable[[str], None]
) -> None:
    path = shm_dir / "guest.ram"
    for index in range(1, STEADY_CHUNKS + 1):
        inject_faults(f"prefault:{index}")
        spec = RegionSpec(size=SIZE, backing=str(path) if backing == "file" else backing)
        with pytest.raises(TaskFailed) as caught, open_region(spec) as region:
            try:
                prefault(region, min_chunk=STEADY_CHUNK)
            finally:
                assert populated(region) == 0, f"chunk {index}: pages left populated"
        assert caught.value.exit_status == 1
        assert "EIO" in str(caught.value)
        assert not path.exists()


def test_failed_prefault_keeps_existing_file_data(shm_dir: Path, inject_faults: Callable[[str], None]) -> None:
    path = shm_dir / "guest.ram"
    with open(path, "wb") as handle:
        handle.truncate(SIZE)
        for offset, length in ((0, 8192), (5 * MiB + 4096, 3 * MiB), (SIZE - 4096, 4096)):
            handle.seek(offset)
            handle.write(os.urandom(length))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    blocks = path.stat().st_blocks
    for index in range(1, STEADY_CHUNKS + 1):
        inject_faults(f"prefault:{index}")
        with open_region(RegionSpec(size=SIZE, backing=str(path))) as region, pytest.raises(TaskFailed):
            prefault(region, min_chunk=STEADY_CHUNK)
        assert path.stat().st_blocks == blocks, f"chunk {index}: allocation changed"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"chunk {index}: data changed"
    inject_faults("")
    with open_region(RegionSpec(size=SIZE, backing=str(path))) as region:
        prefault(region, min_chunk=MIN_CHUNK)
        assert region.allocated_bytes() == SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # populating never changes data


def test_process_helpers_populate_the_same_pages(shm_dir: Path) -> None:
    with open_region(RegionSpec(size=SIZE, backing=str(shm_dir / "guest.ram"))) as region:
        report = prefault(region, min_chunk=MIN_CHUNK, max_threads=2, helpers=HelperKind.PROCESS)
        assert region.allocated_bytes() == SIZE
        assert report.helpers in ("process", "thread")  # one chunk per worker may run in the caller


def test_anonymous_memory_cannot_use_process_helpers() -> None:
    with open_region(RegionSpec(size=SIZE, backing="anon")) as region:
        with pytest.raises(UsageError, match="thread helpers"):
            prefault(region, helpers=HelperKind.PROCESS)
        assert resident(region) == 0


def test_touch_fallback_where_the_kernel_lacks_populate_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real = libc.madvise

    def old_kernel(addr: int, length: int, advice: int) -> None:
        if advice == libc.MADV_POPULATE_WRITE:
            raise OSError(errno.EINVAL, "madvise: Invalid argument")
        real(addr, length, advice)

    monkeypatch.setattr(prefault_module.libc, "madvise", old_kernel)
    with open_region(RegionSpec(size=SIZE, backing="memfd")) as region:
        report = prefault(region, min_chunk=MIN_CHUNK)
        assert report.method == "touch"
        assert region.allocated_bytes() == SIZE


def test_parts_cover_only_what_they_name() -> None:
    with open_region(RegionSpec(size=SIZE, backing="memfd")) as region:
        prefault(region, parts=[(0, 8 * MiB, None), (16 * MiB, 4 * MiB, None)], min_chunk=MIN_CHUNK)
        assert region.allocated_bytes() == 12 * MiB
        assert region.data_ranges() == [(0, 8 * MiB), (16 * MiB, 20 * MiB)]


def test_hugetlbfs_file_and_undo(hugetlbfs_mount: Path, inject_faults: Callable[[str], None]) -> None:
    pools = HugepagePools()
    pools.set_total(2 * MiB, pools.state(2 * MiB).total + SIZE // (2 * MiB))
    before = pools.state(2 * MiB)
    path = hugetlbfs_mount / "guest.ram"
    with open_region(RegionSpec(size=SIZE, backing=str(path))) as region:
        for helpers in (HelperKind.THREAD, HelperKind.PROCESS):
            inject_faults("prefault:2")
            with pytest.raises(TaskFailed):
                prefault(region, min_chunk=MIN_CHUNK, helpers=helpers)
            assert region.allocated_bytes() == 0
            inject_faults("")
            prefault(region, min_chunk=MIN_CHUNK, helpers=helpers)
            assert region.allocated_bytes() == SIZE
            assert pools.state(2 * MiB).free == before.free - SIZE // (2 * MiB)
            libc.punch_hole(region.fd or -1, 0, SIZE)
    path.unlink()
    assert pools.state(2 * MiB).free == before.free


ranges = st.lists(st.tuples(st.integers(0, 64), st.integers(1, 8)), max_size=6)


@given(keep=ranges, start=st.integers(0, 40), length=st.integers(1, 40))
def test_holes_are_the_range_minus_kept_data(keep: list[tuple[int, int]], start: int, length: int) -> None:
    merged: list[tuple[int, int]] = []
    for a, n in sorted(keep):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], a + n))
        else:
            merged.append((a, a + n))
    releaser = _Releaser.__new__(_Releaser)
    releaser.keep = merged
    end = start + length
    holes = releaser.holes(start, end)
    covered = {i for a, b in holes for i in range(a, b)}
    kept = {i for a, b in merged for i in range(a, b)}
    assert covered == set(range(start, end)) - kept
    assert all(a < b for a, b in holes)

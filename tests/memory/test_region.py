"""Guest RAM regions: every backing, and every bad input refused with nothing created."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfiotask.errors import HugepageShortageError, ResourceError, UsageError
from vfiotask.host import libc
from vfiotask.host.hugepages import HugepagePools
from vfiotask.host.numa import online_nodes
from vfiotask.memory.region import Region, RegionSpec, open_region

MiB = 1 << 20


def _touch(region: Region) -> None:
    libc.madvise(region.addr, region.size, libc.MADV_POPULATE_WRITE)


@pytest.mark.parametrize("backing", ["anon", "memfd"])
def test_anon_and_memfd(backing: str) -> None:
    with open_region(RegionSpec(size=8 * MiB, backing=backing)) as region:
        assert (region.kind, region.page_size, region.hugetlb) == (backing, 4096, False)
        assert region.shared == (backing == "memfd")
        _touch(region)
        if backing == "memfd":
            assert region.allocated_bytes() == 8 * MiB


def test_created_file_kept_on_success_removed_on_error(shm_dir: Path) -> None:
    path = shm_dir / "guest.ram"
    with open_region(RegionSpec(size=4 * MiB, backing=str(path))) as region:
        assert region.created and region.fstype == "tmpfs"
        assert path.stat().st_size == 4 * MiB
    assert path.exists()
    path.unlink()
    with pytest.raises(RuntimeError), open_region(RegionSpec(size=4 * MiB, backing=str(path))):
        raise RuntimeError("boom")
    assert not path.exists()


def test_existing_file_of_the_right_size_is_opened_and_kept(shm_dir: Path) -> None:
    path = shm_dir / "guest.ram"
    path.write_bytes(b"x" * 4096 + b"\0" * (4 * MiB - 4096))
    with pytest.raises(RuntimeError), open_region(RegionSpec(size=4 * MiB, backing=str(path))) as region:
        assert not region.created
        assert region.data_ranges()[0][0] == 0
        raise RuntimeError("an error does not remove a file we did not create")
    assert path.read_bytes()[:4096] == b"x" * 4096


def test_node_binding_on_an_online_node() -> None:
    node = min(online_nodes() or {0})
    with open_region(RegionSpec(size=4 * MiB, backing="memfd", node=node)) as region:
        _touch(region)
        assert region.node == node


def _refused(spec: RegionSpec, error: type[Exception], match: str, directory: Path | None = None) -> str:
    before = sorted(os.listdir(directory)) if directory else []
    with pytest.raises(error, match=match) as caught:
        open_region(spec)
    if directory:
        assert sorted(os.listdir(directory)) == before, "a refused region left a file behind"
    text = str(caught.value)
    assert "\n" not in text and ";" in text  # one line: what is wrong; what to do
    return text


def test_bad_sizes() -> None:
    _refused(RegionSpec(size=0), UsageError, "greater than zero")
    _refused(RegionSpec(size=-4096), UsageError, "greater than zero")
    _refused(RegionSpec(size=4096 + 1), UsageError, "not a multiple of the 4.0 KiB pages")
    _refused(RegionSpec(size=1 << 50), ResourceError, "more than the host can give")


def test_bad_paths(shm_dir: Path, tmp_path: Path) -> None:
    _refused(RegionSpec(size=4 * MiB, backing=str(shm_dir / "missing/guest.ram")), UsageError, "does not exist")
    text = _refused(RegionSpec(size=4 * MiB, backing=str(tmp_path / "disk.ram")), UsageError, "not tmpfs",
                    tmp_path)
    assert "written back to disk" in text and "--force" in text
    (shm_dir / "small.ram").write_bytes(b"\0" * 8192)
    _refused(RegionSpec(size=4 * MiB, backing=str(shm_dir / "small.ram")), UsageError, "exists with size", shm_dir)
    (shm_dir / "link.ram").symlink_to(shm_dir / "small.ram")
    _refused(RegionSpec(size=8192, backing=str(shm_dir / "link.ram")), UsageError, "symbolic link", shm_dir)
    _refused(RegionSpec(size=8192, backing=str(shm_dir)), UsageError, "not a regular file", shm_dir)
    assert (shm_dir / "small.ram").read_bytes() == b"\0" * 8192


def test_force_allows_a_disk_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.ram"
    with open_region(RegionSpec(size=MiB, backing=str(path), force=True)) as region:
        assert region.fstype not in ("tmpfs", "hugetlbfs")
    assert path.exists()


def test_node_that_does_not_exist() -> None:
    _refused(RegionSpec(size=MiB, node=max(online_nodes() or {0}) + 1), UsageError, "NUMA node .* does not exist")


def test_hugetlb_memfd_page_size_not_offered() -> None:
    _refused(RegionSpec(size=MiB, page_size=3 * MiB), UsageError, "not offered")


def test_hugetlbfs_file(hugetlbfs_mount: Path) -> None:
    pools = HugepagePools()
    state = pools.state(2 * MiB)
    pools.set_total(2 * MiB, state.total + 4)
    path = hugetlbfs_mount / "guest.ram"
    _refused(RegionSpec(size=3 * MiB, backing=str(path)), UsageError, "2.0 MiB pages of hugetlbfs",
             hugetlbfs_mount)
    with open_region(RegionSpec(size=8 * MiB, backing=str(path))) as region:
        assert (region.page_size, region.hugetlb) == (2 * MiB, True)
        _touch(region)
        assert region.allocated_bytes() == 8 * MiB
    path.unlink()


def test_hugetlbfs_pool_too_small_creates_nothing(hugetlbfs_mount: Path) -> None:
    pools = HugepagePools()
    before = pools.state(2 * MiB)
    free = before.available
    text = _refused(RegionSpec(size=(free + 2) * 2 * MiB, backing=str(hugetlbfs_mount / "guest.ram")),
                    HugepageShortageError, "hugepage pool too small", hugetlbfs_mount)
    assert f"{free + 2} pages needed, {free} free" in text
    assert pools.state(2 * MiB) == before

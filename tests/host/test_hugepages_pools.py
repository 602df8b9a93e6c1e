"""Hugepage pool readers against a fixture sysfs tree, and one real resize."""

from __future__ import annotations

from pathlib import Path

import pytest

from vfiotask.host.hugepages import HugepagePools


def pool(directory: Path, total: int, free: int, resv: int | None = None, surplus: int = 0) -> None:
    directory.mkdir(parents=True)
    (directory / "nr_hugepages").write_text(f"{total}\n")
    (directory / "free_hugepages").write_text(f"{free}\n")
    (directory / "surplus_hugepages").write_text(f"{surplus}\n")
    if resv is not None:
        (directory / "resv_hugepages").write_text(f"{resv}\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    pool(tmp_path / "sys/kernel/mm/hugepages/hugepages-2048kB", 512, 500, resv=100)
    pool(tmp_path / "sys/kernel/mm/hugepages/hugepages-1048576kB", 2, 2, resv=0)
    pool(tmp_path / "sys/devices/system/node/node0/hugepages/hugepages-2048kB", 256, 250)
    pool(tmp_path / "sys/devices/system/node/node1/hugepages/hugepages-2048kB", 256, 250)
    (tmp_path / "sys/devices/system/node/node2").mkdir()  # a memoryless node has no pools
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1000 kB\nHugepagesize:       2048 kB\n")
    return tmp_path


def test_sizes_nodes_and_state(sysfs: Path) -> None:
    pools = HugepagePools(sysfs)
    assert pools.page_sizes() == [2 << 20, 1 << 30]
    assert pools.nodes() == [0, 1]
    state = pools.state(2 << 20)
    assert (state.total, state.free, state.reserved, state.available) == (512, 500, 100, 400)
    node = pools.state(2 << 20, node=1)
    assert (node.node, node.total, node.free, node.reserved) == (1, 256, 250, 0)
    assert pools.default_page_size() == 2 << 20


def test_missing_pool_is_named(sysfs: Path) -> None:
    with pytest.raises(FileNotFoundError, match="node 2"):
        HugepagePools(sysfs).state(2 << 20, node=2)


def test_set_total_reads_back(sysfs: Path) -> None:
    pools = HugepagePools(sysfs)
    assert pools.set_total(2 << 20, 600) == 600
    assert pools.state(2 << 20).total == 600


def test_real_pool_resize(hugepage_pools: None) -> None:
    pools = HugepagePools()
    if 2 << 20 not in pools.page_sizes():
        pytest.skip("no 2 MiB hugepage pool on this host")
    before = pools.state(2 << 20).total
    got = pools.set_total(2 << 20, before + 4)
    assert got == pools.state(2 << 20).total
    assert before <= got <= before + 4
    assert pools.set_total(2 << 20, before) == before

"""Hugepage reservations: per owner, all nodes or none, journaled, given back exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from tests.conftest import requires_root
from vfiotask.errors import HostStateError, HugepageShortageError, UsageError, VfiotaskError
from vfiotask.host.hugepages import HugepagePools
from vfiotask.jobs.hugepages import HugepageReserver
from vfiotask.journal import Journal
from vfiotask.journalrecords import HugepagesContents, hugepage_owner

MiB2 = 2 << 20


def make_sysfs(root: Path, nodes: int = 2, sizes_kb: tuple[int, ...] = (2048, 1048576)) -> Path:
    """A sysfs tree with empty pools, as a host with `nodes` NUMA nodes shows it."""
    for size in sizes_kb:
        dirs = [root / f"sys/kernel/mm/hugepages/hugepages-{size}kB"]
        dirs += [root / f"sys/devices/system/node/node{n}/hugepages/hugepages-{size}kB" for n in range(nodes)]
        for directory in dirs:
            directory.mkdir(parents=True)
            for name in ("nr_hugepages", "free_hugepages", "surplus_hugepages", "resv_hugepages"):
                (directory / name).write_text("0\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal: 24000000 kB\nHugepagesize:       2048 kB\n")
    return root


class KernelLikePools(HugepagePools):
    """Pools in a fixture tree whose nodes hold at most `capacity[node]` pages, as a full node does."""

    def __init__(self, root: Path, capacity: dict[int | None, int]) -> None:
        super().__init__(root)
        self.capacity = capacity

    def set_total(self, page_size: int, count: int, node: int | None = None) -> int:
        return super().set_total(page_size, min(count, self.capacity.get(node, 1 << 30)), node)


def pool_count(root: Path, node: int, size_kb: int = 2048) -> int:
    path = root / f"sys/devices/system/node/node{node}/hugepages/hugepages-{size_kb}kB/nr_hugepages"
    return int(path.read_text())


def reserver(tmp_path: Path, capacity: dict[int | None, int] | None = None) -> HugepageReserver:
    root = make_sysfs(tmp_path / "root") if not (tmp_path / "root").exists() else tmp_path / "root"
    return HugepageReserver(KernelLikePools(root, capacity or {}), Journal(HugepagesContents, tmp_path / "state"))


def test_reserve_grows_every_node_and_release_gives_exactly_that_back(tmp_path: Path) -> None:
    r = reserver(tmp_path)
    root = r.pools.root
    (root / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages").write_text("3\n")

    held = r.reserve("guest1", {0: 8 * MiB2, 1: 4 * MiB2 + 1})

    assert (pool_count(root, 0), pool_count(root, 1)) == (8, 3 + 5)
    assert held.pages == {0: 8, 1: 5} and held.page_size == MiB2
    assert [str(o.owner) for o in r.owners()] == ["guest1"]
    assert r.release("guest1") == held
    assert (pool_count(root, 0), pool_count(root, 1)) == (0, 3)
    assert r.owners() == []


def test_reserving_again_is_a_no_op(tmp_path: Path) -> None:
    r = reserver(tmp_path)
    r.reserve("guest1", {0: 4 * MiB2})
    again = r.reserve("guest1", {0: 4 * MiB2})
    assert again.already_held
    assert pool_count(r.pools.root, 0) == 4
    with pytest.raises(UsageError, match="already holds"):
        r.reserve("guest1", {0: 8 * MiB2})
    assert pool_count(r.pools.root, 0) == 4


def test_two_owners_add_up_and_release_independently(tmp_path: Path) -> None:
    r = reserver(tmp_path)
    r.reserve("a", {0: 2 * MiB2})
    r.reserve("b", {0: 3 * MiB2})
    assert pool_count(r.pools.root, 0) == 5
    r.release("a")
    assert pool_count(r.pools.root, 0) == 3
    assert r.release("a") is None
    assert pool_count(r.pools.root, 0) == 3


def test_shortfall_on_one_node_undoes_every_node(tmp_path: Path) -> None:
    r = reserver(tmp_path, capacity={1: 6})
    with pytest.raises(HugepageShortageError, match=r"node 1 gave 6 of 10 hugepages of 2.0 MiB") as info:
        r.reserve("guest1", {0: 10 * MiB2, 1: 10 * MiB2})
    assert info.value.exit_status == 3
    assert (pool_count(r.pools.root, 0), pool_count(r.pools.root, 1)) == (0, 0)
    assert r.owners() == []


@pytest.mark.parametrize("index", [1, 2])
def test_injected_failure_undoes_what_grew(tmp_path: Path, inject_faults: Callable[[str], None], index: int) -> None:
    inject_faults(f"hugepages:{index}")
    r = reserver(tmp_path)
    with pytest.raises(VfiotaskError, match="EIO") as info:
        r.reserve("guest1", {0: 4 * MiB2, 1: 4 * MiB2})
    assert info.value.exit_status == 1
    assert (pool_count(r.pools.root, 0), pool_count(r.pools.root, 1)) == (0, 0)
    assert r.owners() == []


def test_bad_requests_change_nothing(tmp_path: Path) -> None:
    r = reserver(tmp_path)
    with pytest.raises(UsageError, match=r"no hugepage pool of 4\.0 MiB"):
        r.reserve("g", {0: MiB2}, page_size=4 << 20)
    with pytest.raises(UsageError, match="NUMA node 7"):
        r.reserve("g", {7: MiB2})
    with pytest.raises(UsageError, match="owner"):
        r.reserve("a/\n", {0: MiB2})
    assert pool_count(r.pools.root, 0) == 0
    assert not (tmp_path / "state/hugepages.json").exists()


def test_default_page_size_comes_from_meminfo(tmp_path: Path) -> None:
    r = reserver(tmp_path)
    assert r.reserve("g", {None: 1}).page_size == MiB2
    assert int((r.pools.root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text()) == 1


@requires_root
def test_real_pool_reserve_and_release(hugepage_pools: None, tmp_path: Path) -> None:
    pools = HugepagePools()
    if MiB2 not in pools.page_sizes():
        pytest.skip("no 2 MiB hugepage pool on this kernel")
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))
    node = pools.nodes()[0] if pools.nodes() else None
    before = pools.state(MiB2, node).total
    r.reserve("test-real", {node: 8 * MiB2}, MiB2)
    assert pools.state(MiB2, node).total == before + 8
    assert pools.state(MiB2, node).free >= 8
    r.release("test-real")
    assert pools.state(MiB2, node).total == before


@requires_root
def test_real_pool_that_cannot_grow_is_left_as_it_was(hugepage_pools: None, tmp_path: Path) -> None:
    pools = HugepagePools()
    gib = 1 << 30
    if gib not in pools.page_sizes():
        pytest.skip("no 1 GiB hugepage pool on this kernel")
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))
    before = pools.state(gib).total
    too_much = (Path("/proc/meminfo").read_text().split()[1])  # MemTotal in kB
    with pytest.raises(HugepageShortageError, match="no pool was changed"):
        r.reserve("test-huge", {None: int(too_much) * 1024 * 2}, gib)
    # Refused before the pool was asked: the kernel never handed out (and took back) host memory.
    assert pools.state(gib).total == before
    assert r.owners() == []


class FragmentedPools(KernelLikePools):
    """A node that holds `capacity` pages until it is compacted, and `after` pages once it is."""

    def __init__(self, root: Path, capacity: dict[int | None, int], after: dict[int | None, int]) -> None:
        super().__init__(root, capacity)
        self.after = after

    def make_room(self, node: int | None = None) -> None:
        super().make_room(node)  # writes the tree's drop_caches and compact files, as on a host
        self.capacity[node] = self.after.get(node, self.capacity.get(node, 0))


def fragmented_root(tmp_path: Path) -> Path:
    root = make_sysfs(tmp_path / "root")
    (root / "proc/sys/vm").mkdir(parents=True)
    for node in (0, 1):
        (root / f"sys/devices/system/node/node{node}/compact").write_text("")
    (root / "proc/buddyinfo").write_text(
        "Node 0, zone   Normal    500    300    100     50     20     10      5      2      1      0      0\n"
        "Node 1, zone   Normal      0      0      0      0      0      0      0      0      0      0     64\n")
    return root


def test_a_short_node_is_compacted_and_asked_again_before_failing(tmp_path: Path) -> None:
    root = fragmented_root(tmp_path)
    pools = FragmentedPools(root, {0: 3}, after={0: 10})
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))

    held = r.reserve("guest1", {0: 8 * MiB2})

    assert held.pages == {0: 8} and pool_count(root, 0) == 8
    assert (root / "proc/sys/vm/drop_caches").read_text() == "1\n"
    assert (root / "sys/devices/system/node/node0/compact").read_text() == "1\n"
    assert (root / "sys/devices/system/node/node1/compact").read_text() == ""


def test_when_compaction_is_not_enough_the_error_says_what_it_won_and_what_is_fragmented(tmp_path: Path) -> None:
    root = fragmented_root(tmp_path)
    pools = FragmentedPools(root, {0: 3}, after={0: 5})
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))

    with pytest.raises(HugepageShortageError) as caught:
        r.reserve("guest1", {0: 8 * MiB2})

    text = caught.value.one_line()
    assert "node 0 gave 5 of 8 hugepages of 2.0 MiB asked for, 2 of them won by dropping clean caches" in text
    assert "node 0 has 13.2 MiB free, 13.2 MiB of it in blocks smaller than 2.0 MiB" in text
    assert "(free blocks by order 0-10: 500 300 100 50 20 10 5 2 1 0 0)" in text
    assert pool_count(root, 0) == 0 and r.owners() == []


def test_a_host_that_cannot_compact_fails_as_before(tmp_path: Path) -> None:
    r = reserver(tmp_path, {0: 3})  # no drop_caches or compact files: make_room fails, nothing is won
    with pytest.raises(HugepageShortageError, match=r"gave 3 of 8 .* 0 of them won"):
        r.reserve("guest1", {0: 8 * MiB2})
    assert pool_count(r.pools.root, 0) == 0


@requires_root
def test_a_link_put_at_the_mount_point_after_the_check_is_not_followed(
    hugepage_pools: None, tmp_path: Path, mocker: MockerFixture
) -> None:
    """`reserve --mount /tmp/X`: someone who can write /tmp swaps X for a link between the check
    and the mount.  The mount goes through the directory's descriptor, so the link is refused,
    nothing is mounted on its target, and the pool is as it was."""
    pools = HugepagePools()
    if MiB2 not in pools.page_sizes():
        pytest.skip("no 2 MiB hugepage pool on this kernel")
    victim = tmp_path / "victim"
    victim.mkdir()
    mount = tmp_path / "huge"
    check = HugepageReserver._check_mount_point

    def check_then_swap(self: HugepageReserver, path: Path) -> None:
        check(self, path)
        path.symlink_to(victim)  # the race, won

    mocker.patch.object(HugepageReserver, "_check_mount_point", check_then_swap)
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))
    before = pools.state(MiB2, None).total
    with pytest.raises(VfiotaskError, match="link"):
        r.reserve("swapped", {None: MiB2}, MiB2, mount=mount)
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert str(victim) not in mounted and str(mount) not in mounted
    assert pools.state(MiB2, None).total == before
    assert mount.is_symlink() and list(victim.iterdir()) == []
    assert r.owners() == []


class StuckPools(KernelLikePools):
    """Pools that grow but refuse to shrink below `floor` pages (a write the kernel refuses)."""

    def __init__(self, root: Path, floor: int) -> None:
        super().__init__(root, {})
        self.floor = floor

    def set_total(self, page_size: int, count: int, node: int | None = None) -> int:
        if count < self.floor:
            raise OSError(16, "Device or resource busy")
        return super().set_total(page_size, count, node)


def test_a_failed_mount_whose_pools_cannot_shrink_keeps_the_reservation_for_release(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    root = make_sysfs(tmp_path / "root")
    (root / "proc/self").mkdir()
    (root / "proc/self/mountinfo").write_text("")
    pools = StuckPools(root, floor=4)
    r = HugepageReserver(pools, Journal(HugepagesContents, tmp_path / "state"))
    mocker.patch.object(HugepageReserver, "_mount", side_effect=HostStateError("cannot mount a hugetlbfs"))
    mount = tmp_path / "huge"

    with pytest.raises(HostStateError) as caught:
        r.reserve("guest1", {0: 4 * MiB2}, mount=mount)

    text = caught.value.one_line()
    assert "cannot mount a hugetlbfs, and the pools it grew could not be shrunk back: node 0:" in text
    assert "vfiotask hugepages release --owner guest1" in text
    assert pool_count(root, 0) == 4
    assert [(str(o.owner), dict(o.pages)) for o in r.owners()] == [("guest1", {0: 4})]
    assert r.journal.read().owners[hugepage_owner("guest1")].mount is None and not mount.exists()
    pools.floor = 0
    r.release("guest1")
    assert pool_count(root, 0) == 0 and r.owners() == []


def test_a_failed_mount_gives_the_pools_back_and_keeps_no_record(tmp_path: Path, mocker: MockerFixture) -> None:
    r = reserver(tmp_path)
    (r.pools.root / "proc/self").mkdir()
    (r.pools.root / "proc/self/mountinfo").write_text("")
    mocker.patch.object(HugepageReserver, "_mount", side_effect=HostStateError("cannot mount a hugetlbfs"))
    with pytest.raises(HostStateError, match=r"^cannot mount a hugetlbfs$"):
        r.reserve("guest1", {0: 4 * MiB2}, mount=tmp_path / "huge")
    assert pool_count(r.pools.root, 0) == 0 and r.owners() == []

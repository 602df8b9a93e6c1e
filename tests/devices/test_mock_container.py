"""The mock container enforces type1's rules over real mlock: VmLck is what the kernel reports."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, status_field
from tests.devices.helpers import group_held_elsewhere, memfd_region, sysfs
from vfiotask.devices.container import (
    DmaEntryLimitError,
    DmaFailedError,
    DmaFaultError,
    GroupBusyError,
    IovaConflictError,
    IovaInvalidError,
)
from vfiotask.devices.mock import MockContainer, parse_fail_spec
from vfiotask.engine import Engine, Task
from vfiotask.errors import DeviceError, TaskFailed, UsageError
from vfiotask.units import MiB

BASE = 1 << 32
VIABLE = sysfs("viable")


@pytest.fixture
def container(state_dir: Path) -> MockContainer:
    with MockContainer([2], sysfs_root=VIABLE) as opened:
        yield opened


def test_map_locks_pages_and_unmap_gives_them_back(container: MockContainer) -> None:
    start = status_field("VmLck")
    with memfd_region(8 * MiB) as addr:
        container.map_dma(addr, BASE, 8 * MiB)
        assert status_field("VmLck") - start == 8 * MiB
        assert [(m.iova, m.size) for m in container.mappings()] == [(BASE, 8 * MiB)]
        assert container.unmap_dma(BASE, 8 * MiB) == 8 * MiB
        assert status_field("VmLck") == start
    assert container.mappings() == []


def test_info_reports_page_sizes_ranges_and_entries(container: MockContainer) -> None:
    info = container.info()
    assert info.min_pgsize == 4096
    assert info.pgsizes & (2 * MiB)
    assert any(lo <= BASE <= hi for lo, hi in info.iova_ranges)
    assert info.dma_avail == 65535


def test_overlapping_iova_is_eexist(container: MockContainer) -> None:
    with memfd_region(4 * MiB) as addr:
        container.map_dma(addr, BASE, 2 * MiB)
        with pytest.raises(IovaConflictError) as caught:
            container.map_dma(addr + 2 * MiB, BASE + 1 * MiB, 2 * MiB)
        assert caught.value.errno == errno.EEXIST and caught.value.exit_status == 2
        assert len(container.mappings()) == 1


@pytest.mark.parametrize(("vaddr_off", "iova_off", "size"), [(0, 0x800, 4096), (0x800, 0, 4096), (0, 0, 6000),
                                                              (0, 0, 0)])
def test_misalignment_is_einval(container: MockContainer, vaddr_off: int, iova_off: int, size: int) -> None:
    start = status_field("VmLck")
    with memfd_region(1 * MiB) as addr, pytest.raises(IovaInvalidError) as caught:
        container.map_dma(addr + vaddr_off, BASE + iova_off, size)
    assert caught.value.errno == errno.EINVAL
    assert "IOMMU page size 4.0 KiB" in caught.value.one_line()
    assert status_field("VmLck") == start


def test_msi_window_is_outside_the_valid_iova_ranges(container: MockContainer) -> None:
    with memfd_region(4 * MiB) as addr, pytest.raises(IovaInvalidError):
        container.map_dma(addr, 0xFEE00000, 1 * MiB)


def test_no_read_or_write_is_einval(container: MockContainer) -> None:
    with memfd_region(1 * MiB) as addr, pytest.raises(IovaInvalidError):
        container.map_dma(addr, BASE, 1 * MiB, readable=False, writable=False)


def test_unmapped_vaddr_is_efault(container: MockContainer) -> None:
    with memfd_region(1 * MiB) as addr:
        pass
    with pytest.raises(DmaFaultError) as caught:
        container.map_dma(addr, BASE, 1 * MiB)
    assert caught.value.errno == errno.EFAULT
    assert container.mappings() == []


def test_entry_limit_is_enospc_and_an_unmap_frees_an_entry(state_dir: Path) -> None:
    with MockContainer([2], sysfs_root=VIABLE, dma_entry_limit=2) as box, memfd_region(3 * MiB) as addr:
        box.map_dma(addr, BASE, MiB)
        box.map_dma(addr + MiB, BASE + MiB, MiB)
        with pytest.raises(DmaEntryLimitError) as caught:
            box.map_dma(addr + 2 * MiB, BASE + 2 * MiB, MiB)
        assert caught.value.errno == errno.ENOSPC and caught.value.exit_status == 4
        assert "dma_entry_limit" in caught.value.one_line()
        box.unmap_dma(BASE, MiB)
        box.map_dma(addr + 2 * MiB, BASE + 2 * MiB, MiB)


def test_unmap_must_not_bisect_a_mapping(container: MockContainer) -> None:
    with memfd_region(4 * MiB) as addr:
        container.map_dma(addr, BASE, 4 * MiB)
        with pytest.raises(IovaInvalidError):
            container.unmap_dma(BASE, 2 * MiB)
        assert container.unmap_dma(BASE - 4 * MiB, 16 * MiB) == 4 * MiB
        assert container.unmap_dma(BASE, 4 * MiB) == 0


def test_two_mappings_of_the_same_pages_are_charged_twice_as_type1_does(container: MockContainer) -> None:
    start = status_field("VmLck")
    with memfd_region(2 * MiB) as addr:
        container.map_dma(addr, BASE, 2 * MiB)
        container.map_dma(addr, BASE + 2 * MiB, 2 * MiB)
        assert status_field("VmLck") - start == 4 * MiB
        container.unmap_dma(BASE, 2 * MiB)
        assert status_field("VmLck") - start == 2 * MiB  # still locked for the other mapping
        container.unmap_dma(BASE + 2 * MiB, 2 * MiB)
        assert status_field("VmLck") == start


def test_maps_are_serialized_by_one_lock(container: MockContainer) -> None:
    active = 0
    most = 0
    guard = threading.Lock()
    real_pin = container.iommu.pin

    def counting_pin(vaddr: int, size: int) -> None:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        try:
            real_pin(vaddr, size)
        finally:
            with guard:
                active -= 1

    container.iommu.pin = counting_pin
    with memfd_region(32 * MiB) as addr:
        threads = [threading.Thread(target=container.map_dma, args=(addr + i * 4 * MiB, BASE + i * 4 * MiB, 4 * MiB))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(container.mappings()) == 8
        assert most == 1


def test_group_in_a_container_is_busy_until_closed(state_dir: Path) -> None:
    with MockContainer([2], sysfs_root=VIABLE):
        with pytest.raises(GroupBusyError) as caught:
            MockContainer([2], sysfs_root=VIABLE)
        assert caught.value.errno == errno.EBUSY and caught.value.exit_status == 4
    with MockContainer([2], sysfs_root=VIABLE) as again:
        assert again.groups == [2]


def test_group_busy_across_processes(state_dir: Path) -> None:
    with group_held_elsewhere(2, VIABLE) as pid, pytest.raises(GroupBusyError, match=f"pid {pid}"):
        MockContainer([2], sysfs_root=VIABLE)
    MockContainer([2], sysfs_root=VIABLE).close()


def test_group_with_a_sibling_on_a_host_driver_is_refused(state_dir: Path) -> None:
    with pytest.raises(DeviceError) as caught:
        MockContainer([1], sysfs_root=sysfs("sibling"))
    line = caught.value.one_line()
    assert "0000:01:00.1" in line and "snd_hda_intel" in line and "vfiotask bind 0000:01:00.1" in line
    assert caught.value.exit_status == 4


def test_group_with_no_device_on_vfio_names_the_bind_command_for_the_same_tree(state_dir: Path) -> None:
    with pytest.raises(DeviceError) as caught:
        MockContainer([0], sysfs_root=sysfs("sibling"))
    line = caught.value.one_line()
    assert "no device of the group is bound to vfio-pci" in line
    assert line.endswith(f"vfiotask bind 0000:00:00.0 --sysfs-root {sysfs('sibling')}")


def test_unknown_group_is_a_usage_error(state_dir: Path) -> None:
    with pytest.raises(UsageError, match="no IOMMU group 42"):
        MockContainer([42], sysfs_root=VIABLE)


def test_host_without_iommu_groups_says_how_to_enable_the_iommu(state_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "sys"
    (bare / "bus" / "pci" / "devices").mkdir(parents=True)
    with pytest.raises(DeviceError, match="intel_iommu=on"):
        MockContainer([1], sysfs_root=bare)


def test_fail_spec_parsing() -> None:
    assert parse_fail_spec("3:ENOMEM, 5:5") == {3: errno.ENOMEM, 5: 5}
    with pytest.raises(UsageError):
        parse_fail_spec("0:EIO")
    with pytest.raises(UsageError):
        parse_fail_spec("2:ENOTANERRNO")


CHUNKS = 6


@pytest.mark.parametrize("k", range(1, CHUNKS + 1))
def test_a_fault_at_every_map_index_leaves_nothing_locked_or_mapped(
    k: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFIOTASK_MOCK_FAIL", f"{k}:EIO")
    start = status_field("VmLck")
    with MockContainer([2], sysfs_root=VIABLE) as box, memfd_region(CHUNKS * 2 * MiB) as addr:
        task = Task.over_range(
            "map", 0, CHUNKS * 2 * MiB,
            lambda lo, hi: box.map_dma(addr + lo, BASE + lo, hi - lo),
            undo=lambda lo, hi: box.unmap_dma(BASE + lo, hi - lo),
            min_chunk=2 * MiB, align=2 * MiB, max_threads=1,
        )
        with pytest.raises(TaskFailed) as caught:
            Engine().run(task)
        assert isinstance(caught.value.cause, DmaFailedError) and caught.value.cause.errno == errno.EIO
        assert box.mappings() == []
        assert status_field("VmLck") == start


MEMLOCK_SCRIPT = """
import sys
from pathlib import Path
from vfiotask.devices.mock import MockContainer
from tests.conftest import status_field
from tests.devices.helpers import memfd_region
with MockContainer([2], sysfs_root=Path(sys.argv[1])) as box, memfd_region(16 << 20) as addr:
    box.map_dma(addr, 1 << 32, 4 << 20)
    try:
        box.map_dma(addr + (4 << 20), (1 << 32) + (4 << 20), 12 << 20)
    except Exception as exc:
        print(type(exc).__name__, exc.errno, exc.exit_status, exc.needed, status_field("VmLck"), len(box.mappings()))
        print(exc.one_line())
"""


def test_past_the_memlock_limit_the_map_fails_with_enomem_and_the_number_needed(state_dir: Path) -> None:
    child = subprocess.run(
        ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "prlimit", "--memlock=8388608",
         sys.executable, "-c", MEMLOCK_SCRIPT, str(VIABLE)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert child.returncode == 0, child.stderr
    first, second = child.stdout.splitlines()
    name, err, status, needed, vmlck, mapped = first.split()
    assert (name, int(err), int(status)) == ("DmaMemlockError", errno.ENOMEM, 3)
    assert int(needed) == 16 * MiB and int(vmlck) == 4 * MiB and int(mapped) == 1
    assert "RLIMIT_MEMLOCK is 8.0 MiB" in second and "16777216 bytes" in second

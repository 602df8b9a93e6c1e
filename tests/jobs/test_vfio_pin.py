"""The pin job through a DMA container (mock, over real mlock): IOVA layout, VmLck, every undo."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import status_field
from tests.devices.helpers import sysfs
from vfiotask.devices.container import DmaFailedError, DmaMemlockError
from vfiotask.errors import DeviceError, TaskFailed, UsageError
from vfiotask.jobs.pin import pin
from vfiotask.jobs.prefault import prefault
from vfiotask.jobs.vfio_pin import open_backend, resolve_group
from vfiotask.memory.accountant import LockedMemoryAccountant
from vfiotask.memory.region import Region, RegionSpec, open_region
from vfiotask.units import MiB

BASE = 1 << 32
SIZE = 32 * MiB
CHUNK = 4 * MiB
VIABLE = sysfs("viable")


@pytest.fixture
def region() -> Iterator[Region]:
    with open_region(RegionSpec(size=SIZE, backing="memfd")) as opened:
        yield opened


def test_chunks_are_mapped_at_base_plus_offset_and_released(region: Region, state_dir: Path) -> None:
    start = status_field("VmLck")
    prefault(region, max_threads=2, min_chunk=CHUNK)
    with open_backend("mock", group=2, device=None, iova=BASE, sysfs_root=VIABLE) as backend:
        assert backend.serializes and backend.name == "mock"
        pinning = pin(region, backend, LockedMemoryAccountant(), min_chunk=CHUNK)
        maps = backend.container.mappings()
        assert sum(m.size for m in maps) == SIZE
        assert all(m.iova - BASE == m.vaddr - region.addr for m in maps)
        assert status_field("VmLck") - start == SIZE
        pinning.release()
        assert backend.container.mappings() == []
        assert status_field("VmLck") == start


def test_leaving_the_context_unmaps_what_is_left(region: Region, state_dir: Path) -> None:
    start = status_field("VmLck")
    with open_backend("mock", group=None, device="0000:01:00.1", iova=BASE, sysfs_root=VIABLE) as backend:
        pin(region, backend, LockedMemoryAccountant(), min_chunk=CHUNK)
        assert status_field("VmLck") - start == SIZE
    assert status_field("VmLck") == start


def _map_count(region: Region) -> int:
    with open_backend("mock", group=2, device=None, iova=BASE, sysfs_root=VIABLE) as backend, \
            pin(region, backend, LockedMemoryAccountant(), min_chunk=CHUNK):
        return len(backend.container.mappings())


def test_a_map_failing_at_every_index_leaves_vmlck_and_the_container_as_they_were(
    region: Region, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = _map_count(region)
    assert maps > 1
    for k in range(1, maps + 1):
        monkeypatch.setenv("VFIOTASK_MOCK_FAIL", f"{k}:ENOMEM")
        start = status_field("VmLck")
        with open_backend("mock", group=2, device=None, iova=BASE, sysfs_root=VIABLE) as backend:
            accountant = LockedMemoryAccountant()
            with pytest.raises(TaskFailed) as caught:
                pin(region, backend, accountant, min_chunk=CHUNK)
            assert isinstance(caught.value.cause, DmaMemlockError) and caught.value.exit_status == 3
            assert backend.container.mappings() == []
            assert accountant.charged == 0
            assert status_field("VmLck") == start, f"map {k}"


def test_engine_fault_injection_at_every_pin_chunk(
    region: Region, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = _map_count(region)
    for k in range(1, maps + 1):
        monkeypatch.setenv("VFIOTASK_FAIL", f"pin:{k}")
        start = status_field("VmLck")
        with open_backend("mock", group=2, device=None, iova=BASE, sysfs_root=VIABLE) as backend:
            with pytest.raises(TaskFailed):
                pin(region, backend, LockedMemoryAccountant(), min_chunk=CHUNK)
            assert backend.container.mappings() == []
        assert status_field("VmLck") == start, f"chunk {k}"


def test_injected_eio_is_exit_1(region: Region, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFIOTASK_MOCK_FAIL", "2:EIO")
    with open_backend("mock", group=2, device=None, iova=BASE, sysfs_root=VIABLE) as backend, \
            pytest.raises(TaskFailed) as caught:
        pin(region, backend, LockedMemoryAccountant(), min_chunk=CHUNK)
    assert isinstance(caught.value.cause, DmaFailedError) and caught.value.cause.errno == errno.EIO
    assert caught.value.exit_status == 1


def test_group_resolution() -> None:
    assert resolve_group(None, "01:00.0", VIABLE) == 2
    assert resolve_group(2, "0000:01:00.0", VIABLE) == 2
    with pytest.raises(UsageError, match="not 3"):
        resolve_group(3, "0000:01:00.0", VIABLE)
    with pytest.raises(UsageError, match="--group N or --device ADDR"):
        resolve_group(None, None, VIABLE)
    with pytest.raises(UsageError, match="no PCI device"):
        resolve_group(None, "0000:77:00.0", VIABLE)


def test_bad_kind_and_iova(state_dir: Path) -> None:
    with pytest.raises(UsageError), open_backend("ioctl", group=2, device=None, iova=0, sysfs_root=VIABLE):
        pass
    with pytest.raises(UsageError, match="4 KiB-aligned"), \
            open_backend("mock", group=2, device=None, iova=0x800, sysfs_root=VIABLE):
        pass
    with pytest.raises(UsageError, match="--iova -4096 is negative"), \
            open_backend("mock", group=2, device=None, iova=-4096, sysfs_root=VIABLE):
        pass


@pytest.mark.skipif(Path("/dev/vfio").exists(), reason="this host has VFIO")
def test_vfio_on_a_host_without_vfio_is_an_error_not_the_mock(state_dir: Path) -> None:
    with pytest.raises(DeviceError, match="amd_iommu=on"), \
            open_backend("vfio", group=2, device=None, iova=BASE, sysfs_root=VIABLE):
        pass

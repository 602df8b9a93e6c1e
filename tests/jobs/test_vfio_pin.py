"""The pin job through a DMA container (mock, over real mlock): IOVA layout, VmLck, every undo."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from tests.conftest import status_field
from tests.devices.fake_kernel import FakeGroup, FakeVfioKernel
from tests.devices.helpers import group_with_cdevs, sysfs
from vfiotask.devices import uapi
from vfiotask.devices.container import DmaFailedError, DmaMemlockError
from vfiotask.devices.real import IommufdContainer, Type1Container
from vfiotask.devices.syscalls import IoctlArg
from vfiotask.errors import DeviceError, TaskFailed, UsageError
from vfiotask.jobs.pin import pin
from vfiotask.jobs.prefault import prefault
from vfiotask.jobs.vfio_pin import ContainerBackend, open_backend, resolve_group
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
    region: Region, state_dir: Path, inject_faults: Callable[[str], None]
) -> None:
    maps = _map_count(region)
    for k in range(1, maps + 1):
        inject_faults(f"pin:{k}")
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


@pytest.mark.parametrize(("err", "status", "words"), [
    (errno.ENOMEM, 3, "RLIMIT_MEMLOCK"),
    (errno.EFAULT, 1, "not mapped in this process"),
    (errno.EINTR, 1, "EINTR"),
    (errno.EAGAIN, 1, "EAGAIN"),
], ids=["ENOMEM", "EFAULT", "EINTR", "EAGAIN"])
def test_a_map_ioctl_failing_mid_task_leaves_the_iommu_empty(
    err: int, status: int, words: str, region: Region, mocker: MockerFixture
) -> None:
    """The real type1 container over a fake kernel; pytest-mock makes the kernel's third
    VFIO_IOMMU_MAP_DMA fail.  The user gets the errno's meaning and exit status, and the kernel
    holds no pin and no mapping afterwards."""
    fake = FakeVfioKernel(groups={5: FakeGroup()})
    real_ioctl = fake.ioctl
    maps = 0

    def ioctl(fd: int, request: int, arg: IoctlArg = 0) -> int:
        nonlocal maps
        if request == uapi.VFIO_IOMMU_MAP_DMA:
            maps += 1
            if maps == 3:
                raise OSError(err, os.strerror(err))
        return real_ioctl(fd, request, arg)

    mocker.patch.object(fake, "ioctl", side_effect=ioctl)
    acct = LockedMemoryAccountant.for_budget(None)
    with Type1Container([5], syscalls=fake) as container:
        with pytest.raises(TaskFailed) as caught:
            pin(region, ContainerBackend(container, BASE), acct, min_chunk=CHUNK)
        assert caught.value.exit_status == status
        assert words in caught.value.one_line()
        assert fake.pinned == [] and container.mappings() == []
        assert acct.charged == 0


def test_iommufd_maps_chunks_from_several_workers_type1_from_one(region: Region, tmp_path: Path) -> None:
    """iommufd's maps of disjoint ranges run in parallel in the kernel, type1's do not: the pin job
    lets the engine's workers map iommufd chunks, and the container's record stays whole."""
    fake = FakeVfioKernel(groups={5: FakeGroup(cdevs=("vfio0",))})
    sys_root = group_with_cdevs(tmp_path, 5, {"0000:01:00.0": "vfio0"})
    acct = LockedMemoryAccountant.for_budget(None)
    with IommufdContainer([5], syscalls=fake, sys_root=sys_root, attach="cdev") as container:
        backend = ContainerBackend(container, BASE)
        assert not backend.serializes
        with pin(region, backend, acct, max_threads=2, min_chunk=CHUNK) as pinning:
            # How many chunks the engine cuts depends on the CPUs it finds idle; they tile the range
            maps = sorted(container.mappings(), key=lambda m: m.iova)
            assert [m.iova for m in maps] == [BASE, *(m.end for m in maps[:-1])] and maps[-1].end == BASE + SIZE
            assert all(m.size % CHUNK == 0 for m in maps)
            assert pinning.locked_bytes == SIZE
        assert container.mappings() == [] and fake.pinned == []
    with Type1Container([5], syscalls=FakeVfioKernel(groups={5: FakeGroup()})) as container:
        assert ContainerBackend(container, BASE).serializes

"""The real containers' ioctl sequences, against a fake kernel that decodes their structs."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.devices.fake_kernel import FakeGroup, FakeVfioKernel
from tests.devices.helpers import group_with_cdevs
from vfiotask.devices import uapi
from vfiotask.devices.container import GroupBusyError, IovaConflictError, IovaInvalidError
from vfiotask.devices.real import IommufdContainer, Type1Container, open_real_container
from vfiotask.errors import DeviceError

MiB = 1 << 20
BASE = 1 << 32


def kernel(**groups: FakeGroup) -> FakeVfioKernel:
    return FakeVfioKernel(groups={int(k.removeprefix("g")): v for k, v in groups.items()})


def test_type1_open_sequence_map_and_close() -> None:
    fake = kernel(g5=FakeGroup(), g6=FakeGroup())
    box = Type1Container([5, 6], syscalls=fake)
    calls = [entry.split(":")[1] for entry in fake.log]
    assert calls[:5] == [hex(uapi.VFIO_GET_API_VERSION), hex(uapi.VFIO_CHECK_EXTENSION),
                         hex(uapi.VFIO_GROUP_GET_STATUS), hex(uapi.VFIO_GROUP_SET_CONTAINER),
                         hex(uapi.VFIO_SET_IOMMU)]
    assert calls.count(hex(uapi.VFIO_SET_IOMMU)) == 1  # once, after the first group
    assert box.groups == [5, 6]
    box.map_dma(0x7F0000000000, BASE, 4 * MiB)
    box.map_dma(0x7F0000400000, BASE + 4 * MiB, 4 * MiB)
    assert fake.pinned == [(0x7F0000000000, 4 * MiB), (0x7F0000400000, 4 * MiB)]
    assert box.unmap_dma(BASE, 4 * MiB) == 4 * MiB
    box.close()
    assert fake.pinned == [] and fake.fds == {}


def test_type1_info_parses_the_capability_chain() -> None:
    fake = kernel(g1=FakeGroup())
    with Type1Container([1], syscalls=fake) as box:
        info = box.info()
    assert info.pgsizes == fake.iommu.pgsizes
    assert info.iova_ranges == fake.iommu.iova_ranges
    assert info.dma_avail == 65535


def test_type1_errnos_become_our_errors() -> None:
    fake = kernel(g1=FakeGroup())
    with Type1Container([1], syscalls=fake) as box:
        box.map_dma(0x7F0000000000, BASE, 2 * MiB)
        with pytest.raises(IovaConflictError):
            box.map_dma(0x7F0000200000, BASE, 2 * MiB)
        with pytest.raises(IovaInvalidError, match="valid IOVA ranges"):
            box.map_dma(0x7F0000200000, 0xFEE00000, 2 * MiB)


def test_not_viable_group_is_refused_and_everything_closed() -> None:
    fake = kernel(g1=FakeGroup(viable=False))
    with pytest.raises(DeviceError, match="group 1 is not viable"):
        Type1Container([1], syscalls=fake)
    assert fake.fds == {}


def test_group_without_vfio_node_says_to_bind() -> None:
    with pytest.raises(DeviceError, match="bound to vfio-pci"):
        Type1Container([9], syscalls=kernel())


def test_busy_group() -> None:
    fake = kernel(g1=FakeGroup(busy=True))
    with pytest.raises(GroupBusyError) as caught:
        Type1Container([1], syscalls=fake)
    assert caught.value.errno == errno.EBUSY and caught.value.exit_status == 4


def test_group_already_in_a_container() -> None:
    fake = kernel(g1=FakeGroup())
    with Type1Container([1], syscalls=fake), pytest.raises(GroupBusyError):
        Type1Container([1], syscalls=fake)


def test_no_type1v2() -> None:
    with pytest.raises(DeviceError, match="type1v2"):
        Type1Container([1], syscalls=FakeVfioKernel(groups={1: FakeGroup()}, has_type1v2=False))


def test_iommufd_sequence(tmp_path: Path) -> None:
    fake = kernel(g3=FakeGroup())
    sys_root = group_with_cdevs(tmp_path, 3, {"0000:00:11.0": "", "0000:01:00.0": "vfio0"})
    with IommufdContainer([3], syscalls=fake, sys_root=sys_root, attach="group") as box:
        assert [n for n in fake.fds.values() if n.startswith("device:")] == ["device:0000:01:00.0"]
        info = box.info()
        assert info.iova_ranges == fake.iommu.iova_ranges and info.min_pgsize == 4096
        box.map_dma(0x7F0000000000, BASE, 2 * MiB)
        assert fake.pinned == [(0x7F0000000000, 2 * MiB)]
        assert box.unmap_dma(BASE, 2 * MiB) == 2 * MiB
        assert box.unmap_dma(BASE, 2 * MiB) == 0
    assert fake.fds == {}


def test_missing_dev_vfio_is_an_error_with_the_fix_never_a_mock(tmp_path: Path) -> None:
    with pytest.raises(DeviceError) as caught:
        open_real_container([1], dev_root=tmp_path)
    line = caught.value.one_line()
    assert "no VFIO" in line and "intel_iommu=on" in line and "amd_iommu=on" in line and "vfio-pci" in line
    assert caught.value.exit_status == 4


@pytest.mark.skipif(Path("/dev/vfio").exists(), reason="this host has VFIO")
def test_this_host_has_no_vfio() -> None:
    with pytest.raises(DeviceError, match="iommu=pt"):
        open_real_container([1])


def test_iommufd_attaches_each_device_cdev_to_the_ioas(tmp_path: Path) -> None:
    fake = kernel(g5=FakeGroup(cdevs=("vfio0", "vfio1")))
    sys_root = group_with_cdevs(tmp_path, 5, {"0000:00:11.0": "", "0000:01:01.0": "vfio0", "0000:01:02.0": "vfio1"})
    box = IommufdContainer([5], syscalls=fake, sys_root=sys_root, attach="cdev")
    assert box.attach == "cdev" and fake.bound == {"vfio/devices/vfio0", "vfio/devices/vfio1"}
    assert uapi.IOMMU_VFIO_IOAS not in [int(e.split(":")[1], 16) for e in fake.log]  # no group files
    box.map_dma(0x7F0000000000, BASE, 2 * MiB)
    box.close()
    assert fake.pinned == [] and fake.fds == {} and fake.bound == set()


def test_iommufd_cdev_refused_as_busy_names_the_group_and_closes_everything(tmp_path: Path) -> None:
    fake = kernel(g5=FakeGroup(cdevs=("vfio0",), viable=False))
    sys_root = group_with_cdevs(tmp_path, 5, {"0000:01:01.0": "vfio0"})
    with pytest.raises(GroupBusyError, match="IOMMU group 5"):
        IommufdContainer([5], syscalls=fake, sys_root=sys_root, attach="cdev")
    assert fake.fds == {}


def test_iommufd_cdev_without_a_vfio_device_says_to_bind(tmp_path: Path) -> None:
    fake = kernel(g5=FakeGroup())
    sys_root = group_with_cdevs(tmp_path, 5, {"0000:01:01.0": ""})
    with pytest.raises(DeviceError, match="vfiotask bind"):
        IommufdContainer([5], syscalls=fake, sys_root=sys_root, attach="cdev")
    assert fake.fds == {}


def test_iommufd_unmap_that_would_cut_a_mapping_is_einval_as_with_type1(tmp_path: Path) -> None:
    fake = kernel(g5=FakeGroup())
    sys_root = group_with_cdevs(tmp_path, 5, {"0000:01:00.0": "vfio0"})
    with IommufdContainer([5], syscalls=fake, sys_root=sys_root, attach="group") as box:
        box.map_dma(0x7F0000000000, BASE, 2 * MiB)
        with pytest.raises(IovaInvalidError):
            box.unmap_dma(BASE + MiB, 2 * MiB)
        assert box.unmap_dma(BASE + 4 * MiB, 2 * MiB) == 0
        assert box.unmap_dma(BASE, 2 * MiB) == 2 * MiB

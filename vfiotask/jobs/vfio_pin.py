"""Pinning through a DMA container: the pin job's backend for `--pin vfio` and `--pin mock`.

Each chunk of the region is mapped at IOVA = base + offset, as QEMU maps guest RAM; the pin job
charges the accountant before each map and unmaps on undo.  type1 (and the mock, its model)
serializes maps (`iommu->lock` is held for the whole pin), so there the parallel part is the
prefault before; iommufd maps disjoint ranges in parallel (measured in a nested guest, see
docs/devices.md), so its chunks are mapped by as many workers as the engine gives.
Which container is an explicit choice: "vfio" on a host without VFIO is an error that says how
to enable it, never a quiet switch to the mock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vfiotask.devices import CONTAINER_KINDS, DmaContainer, discover, normalize_address, open_container
from vfiotask.devices.viability import ENABLE_IOMMU_HINT
from vfiotask.errors import DeviceError, UsageError
from vfiotask.memory.region import Region


class ContainerBackend:
    """A PinBackend over a DMA container."""

    def __init__(self, container: DmaContainer, iova: int) -> None:
        self.container = container
        self.iova = iova
        self.name = container.name
        self.serializes = not container.parallel_maps

    def pin(self, region: Region, offset: int, length: int) -> None:
        # A failed map undoes its own partial pin (the kernel's contract, and the mock's).
        self.container.map_dma(region.addr + offset, self.iova + offset, length)

    def unpin(self, region: Region, offset: int, length: int) -> None:
        self.container.unmap_dma(self.iova + offset, length)


def resolve_group(group: int | None, device: str | None, sysfs_root: Path | None) -> int:
    """The IOMMU group to open: `group`, or the group of `device` (both given must agree)."""
    if device is None:
        if group is None:
            raise UsageError("a container needs an IOMMU group",
                             hint="give --group N or --device ADDR (see 'vfiotask devices')")
        if group < 0:
            raise UsageError(f"--group {group} is not a group number", hint="give a number from 'vfiotask devices'")
        return group
    host = discover(sysfs_root)
    found = host.device(normalize_address(device))
    if found.iommu_group is None:
        raise DeviceError(f"{found.address} has no IOMMU group: the host's IOMMU is off", hint=ENABLE_IOMMU_HINT)
    if group is not None and group != found.iommu_group:
        raise UsageError(f"--device {found.address} is in IOMMU group {found.iommu_group}, not {group}",
                         hint="give only one of --group and --device")
    return found.iommu_group


@contextmanager
def open_backend(kind: str, *, group: int | None, device: str | None, iova: int,
                 sysfs_root: Path | None) -> Iterator[ContainerBackend]:
    """Open a container for the group and yield a pin backend mapping at `iova` + offset.
    Leaving the context unmaps anything still mapped and closes the container."""
    if kind not in CONTAINER_KINDS:
        raise UsageError(f"unknown container kind {kind!r}", hint="use --pin vfio or --pin mock")
    if iova < 0:
        raise UsageError(f"--iova {iova} is negative", hint="give a page-aligned base such as 0x100000000")
    if iova % 4096:
        raise UsageError(f"--iova {iova:#x} is not a 4 KiB-aligned address",
                         hint="give a page-aligned base such as 0x100000000")
    number = resolve_group(group, device, sysfs_root)
    container = open_container(kind, [number], sysfs_root=sysfs_root)
    try:
        yield ContainerBackend(container, iova)
    finally:
        container.close()

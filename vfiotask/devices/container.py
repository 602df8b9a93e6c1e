"""What every DMA container offers, real or mock, and the errors its maps turn into.

A container is what QEMU holds for a guest with assigned devices: one or more IOMMU groups
sharing one IO address space.  Maps pin the pages behind them; the kernel charges those pins to
the mapping process's locked memory.  Both implementations raise the classes below, built by
`dma_error` from the errno, so callers see the same message for the same kernel refusal.
"""

from __future__ import annotations

import errno as errno_module
import os
import resource
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from vfiotask.errors import DeviceError, MemlockLimitError, UsageError, VfiotaskError
from vfiotask.host.procfs import locked_memory
from vfiotask.units import format_size

# What type1 reports on a typical x86 host: 4 KiB, 2 MiB and 1 GiB IOMMU pages.
DEFAULT_PGSIZES = (1 << 12) | (1 << 21) | (1 << 30)
# The module parameter vfio_iommu_type1.dma_entry_limit defaults to U16_MAX.
DEFAULT_DMA_ENTRY_LIMIT = 65535
# x86 IOMMUs reserve the MSI window 0xfee00000-0xfeefffff; 48-bit IOVA space otherwise.
X86_IOVA_RANGES = ((0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1))


@dataclass(frozen=True)
class IommuInfo:
    """VFIO_IOMMU_GET_INFO (or IOMMU_IOAS_IOVA_RANGES): what maps must respect."""

    pgsizes: int
    iova_ranges: tuple[tuple[int, int], ...]  # inclusive ends, as the kernel reports them
    dma_avail: int | None = None

    @property
    def min_pgsize(self) -> int:
        """Maps must be aligned to the smallest IOMMU page size."""
        return self.pgsizes & -self.pgsizes if self.pgsizes else 4096


@dataclass(frozen=True)
class Mapping:
    iova: int
    vaddr: int
    size: int

    @property
    def end(self) -> int:
        return self.iova + self.size


class DmaContainer(Protocol):
    """The device-layer interface: one IO address space for one or more IOMMU groups."""

    name: str
    groups: list[int]
    parallel_maps: bool  # whether maps of disjoint ranges run in parallel in the kernel

    def info(self) -> IommuInfo: ...

    def map_dma(self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True) -> None:
        """Pin `[vaddr, vaddr+size)` and map it at `iova`; all or nothing."""
        ...

    def unmap_dma(self, iova: int, size: int) -> int:
        """Unmap every mapping inside `[iova, iova+size)`; returns the bytes unmapped."""
        ...

    def mappings(self) -> list[Mapping]: ...

    def close(self) -> None:
        """Unmap whatever is left, release the groups."""
        ...

    def __enter__(self) -> DmaContainer: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None: ...


# The errors a map turns into.  Each carries the errno it came from.


class IovaConflictError(UsageError):
    errno = errno_module.EEXIST


class IovaInvalidError(UsageError):
    errno = errno_module.EINVAL


class DmaEntryLimitError(DeviceError):
    errno = errno_module.ENOSPC


class GroupBusyError(DeviceError):
    errno = errno_module.EBUSY


class DmaFaultError(VfiotaskError):
    errno = errno_module.EFAULT


class DmaMemlockError(MemlockLimitError):
    errno = errno_module.ENOMEM


class DmaFailedError(VfiotaskError):
    """Any other errno (EIO from fault injection, ENODEV, ...)."""

    def __init__(self, message: str, *, hint: str | None = None, errno: int = errno_module.EIO) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


def memlock_limit() -> int:
    """RLIMIT_MEMLOCK's soft limit in bytes (RLIM_INFINITY as -1)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return -1 if soft == resource.RLIM_INFINITY else soft


def dma_error(
    err: int, *, op: str, vaddr: int = 0, iova: int = 0, size: int = 0, info: IommuInfo | None = None
) -> VfiotaskError:
    """Turn a map/unmap errno into the error a user can act on."""
    where = f"{op} of {format_size(size)} at IOVA {iova:#x}"
    if err == errno_module.ENOMEM:
        limit = memlock_limit()
        locked = locked_memory().total  # VmLck + VmPin, what the kernel holds against the limit
        needed = locked + size
        return DmaMemlockError(
            f"{where} failed: pinning it needs {format_size(needed)} of locked memory "
            f"({format_size(locked)} already locked) but RLIMIT_MEMLOCK is {format_size(max(limit, 0))}",
            hint=f"raise the memlock limit to at least {needed} bytes (ulimit -l {-(-needed // 1024)}, "
            f"LimitMEMLOCK= in the service, or libvirt <memtune><hard_limit>), or run with CAP_IPC_LOCK",
            needed=needed,
            limit=limit,
            locked=locked,
        )
    if err == errno_module.EEXIST:
        return IovaConflictError(
            f"{where} failed: the IOVA range overlaps an existing mapping in the container",
            hint="choose a base IOVA (--iova) past the mappings already made, or unmap them first",
        )
    if err == errno_module.EINVAL:
        detail = ""
        if info is not None:
            ranges = ", ".join(f"[{lo:#x}, {hi:#x}]" for lo, hi in info.iova_ranges)
            detail = f" (IOMMU page size {format_size(info.min_pgsize)}; valid IOVA ranges {ranges})"
        return IovaInvalidError(
            f"{where} (vaddr {vaddr:#x}) was refused as invalid{detail}",
            hint="align IOVA, address and size to the IOMMU page size and keep the range inside one valid IOVA "
            "range (on x86 the MSI window 0xfee00000-0xfeefffff is reserved: e.g. --iova 0x100000000 maps above it)",
        )
    if err == errno_module.ENOSPC:
        return DmaEntryLimitError(
            f"{where} failed: the container's DMA mapping limit is used up",
            hint="map fewer, larger chunks, or raise the limit: "
            "echo N > /sys/module/vfio_iommu_type1/parameters/dma_entry_limit",
        )
    if err == errno_module.EFAULT:
        return DmaFaultError(
            f"{where} failed: address {vaddr:#x} is not mapped in this process",
            hint="this is a bug in the caller; report it with the command line",
        )
    if err == errno_module.EBUSY:
        return GroupBusyError(
            f"{op} failed: the IOMMU group is already in use by another container",
            hint="stop the guest or process using it (fuser -v /dev/vfio/*), then retry",
        )
    return DmaFailedError(f"{where} failed: {os.strerror(err)} [{errno_module.errorcode.get(err, err)}]", errno=err)

"""The rules type1 (drivers/vfio/vfio_iommu_type1.c) applies to maps and unmaps, as a model.

The mock container enforces them over real mlock, and the tests' fake kernel answers the real
container's ioctls with them, so both sides of the device layer meet the same rules in the
same order as `vfio_dma_do_map`: no READ/WRITE flag, misalignment or a wrapping range EINVAL;
an overlap EEXIST; no entries left ENOSPC; outside every valid IOVA range EINVAL; then the pin,
which fails with ENOMEM past RLIMIT_MEMLOCK or EFAULT on an unmapped address and undoes its own
partial work.  One lock per container: maps and unmaps never run at the same time, as with the
kernel's `iommu->lock`.
"""

from __future__ import annotations

import bisect
import errno
import threading
from collections.abc import Callable

from vfiotask.devices.container import (
    DEFAULT_DMA_ENTRY_LIMIT,
    DEFAULT_PGSIZES,
    X86_IOVA_RANGES,
    IommuInfo,
    Mapping,
)

U64_MASK = (1 << 64) - 1

PinFn = Callable[[int, int], None]
"""Pins `[vaddr, vaddr+size)` or raises OSError after undoing its own partial pin."""
UnpinFn = Callable[[int, int], None]


class Type1Iommu:
    """One container's IO address space: sorted, non-overlapping mappings and an entry budget."""

    def __init__(
        self,
        *,
        pin: PinFn,
        unpin: UnpinFn,
        pgsizes: int = DEFAULT_PGSIZES,
        iova_ranges: tuple[tuple[int, int], ...] = X86_IOVA_RANGES,
        dma_entry_limit: int = DEFAULT_DMA_ENTRY_LIMIT,
    ) -> None:
        self.pin = pin
        self.unpin = unpin
        self.pgsizes = pgsizes
        self.iova_ranges = iova_ranges
        self.dma_avail = dma_entry_limit
        self.lock = threading.Lock()
        self._starts: list[int] = []
        self._maps: list[Mapping] = []

    def info(self) -> IommuInfo:
        with self.lock:
            return IommuInfo(self.pgsizes, self.iova_ranges, self.dma_avail)

    @property
    def pgsize(self) -> int:
        return self.pgsizes & -self.pgsizes

    def mappings(self) -> list[Mapping]:
        with self.lock:
            return list(self._maps)

    def _overlapping(self, iova: int, size: int) -> list[int]:
        """Indexes of mappings intersecting `[iova, iova+size)`."""
        index = bisect.bisect_right(self._starts, iova) - 1
        index = max(index, 0)
        found = []
        while index < len(self._maps) and self._maps[index].iova < iova + size:
            if self._maps[index].end > iova:
                found.append(index)
            index += 1
        return found

    def map(self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True) -> None:
        if not (readable or writable):
            raise OSError(errno.EINVAL, "neither READ nor WRITE")
        with self.lock:
            mask = self.pgsize - 1
            if not size or (size | iova | vaddr) & mask:
                raise OSError(errno.EINVAL, "not aligned to the IOMMU page size")
            if iova + size - 1 > U64_MASK or vaddr + size - 1 > U64_MASK:
                raise OSError(errno.EINVAL, "range wraps")
            if self._overlapping(iova, size):
                raise OSError(errno.EEXIST, "IOVA range overlaps a mapping")
            if self.dma_avail <= 0:
                raise OSError(errno.ENOSPC, "dma_entry_limit reached")
            last = iova + size - 1
            if self.iova_ranges and not any(lo <= iova and last <= hi for lo, hi in self.iova_ranges):
                raise OSError(errno.EINVAL, "outside the valid IOVA ranges")
            self.pin(vaddr, size)
            self.dma_avail -= 1
            index = bisect.bisect_left(self._starts, iova)
            self._starts.insert(index, iova)
            self._maps.insert(index, Mapping(iova, vaddr, size))

    def unmap(self, iova: int, size: int) -> int:
        """v2 semantics: the range may cover several mappings but must not bisect any."""
        with self.lock:
            mask = self.pgsize - 1
            if (iova & mask) or not size or (size & mask) or iova + size - 1 > U64_MASK:
                raise OSError(errno.EINVAL, "unmap range not aligned")
            hits = self._overlapping(iova, size)
            if hits:
                first, last = self._maps[hits[0]], self._maps[hits[-1]]
                if first.iova < iova or last.end > iova + size:
                    raise OSError(errno.EINVAL, "unmap would bisect a mapping")
            return self._remove(hits)

    def unmap_all(self) -> int:
        with self.lock:
            return self._remove(list(range(len(self._maps))))

    def _remove(self, indexes: list[int]) -> int:
        unmapped = 0
        for index in reversed(indexes):
            mapping = self._maps[index]
            self.unpin(mapping.vaddr, mapping.size)
            del self._maps[index]
            del self._starts[index]
            self.dma_avail += 1
            unmapped += mapping.size
        return unmapped

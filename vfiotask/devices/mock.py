"""A container that behaves like type1 without an IOMMU: for CI, and for hosts without VFIO.

It is a twin of the kernel's rules, not a recorder of calls.  Groups come from a sysfs tree
(a fixture, or /sys) and must be viable exactly as the kernel requires; a group held by another
container (in this or any process: a flock in the state dir, dropped by the kernel when the
holder dies) gives EBUSY.  Maps really pin: `mlock` charges the same `locked_vm` that type1's
pins charge, so VmLck and RLIMIT_MEMLOCK behave as with the kernel, and ENOMEM past the limit
is the kernel's own answer.  The rules and their order are in `type1.Type1Iommu`.

A page mapped twice is charged twice, as type1 charges every mapping in full (checked against
the kernel in a nested guest).  mlock cannot lock a page twice, so the mock locks an anonymous
shadow as large as the overlap: VmLck and RLIMIT_MEMLOCK then count what the kernel counts.
Unmapping one of the mappings keeps the page locked for the other and shrinks the shadow.

Fault injection: VFIOTASK_MOCK_FAIL=K:ERRNO[,K:ERRNO...] makes the K-th map (1-based, counted
per container among the maps that pass the rules) fail with ERRNO (a name such as ENOMEM, or a
number) after pinning half of its range, which it then undoes, as a failing kernel map does.
It is read here, not behind the `fault_injection` setting: the mock is itself a stand-in that
runs only where it is chosen by name (`--pin mock`, a test), never on a path that real devices
take, and its failures imitate the kernel's answers rather than marking a chunk as injected.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import fcntl
import mmap as mmap_module
import os
from pathlib import Path
from types import TracebackType

from vfiotask.devices.container import (
    DEFAULT_DMA_ENTRY_LIMIT,
    DEFAULT_PGSIZES,
    GroupBusyError,
    IommuInfo,
    Mapping,
    dma_error,
)
from vfiotask.devices.discovery import discover
from vfiotask.devices.model import Host
from vfiotask.devices.type1 import Type1Iommu
from vfiotask.devices.viability import ENABLE_IOMMU_HINT, group_viability, not_viable_error
from vfiotask.errors import DeviceError, UsageError
from vfiotask.host import libc
from vfiotask.statedir import state_dir
from vfiotask.units import parse_count

MOCK_FAIL_ENV = "VFIOTASK_MOCK_FAIL"
MOCK_ENTRY_LIMIT_ENV = "VFIOTASK_MOCK_DMA_ENTRY_LIMIT"
MAX_ERRNO = 4095  # the kernel's MAX_ERRNO: an error return is -1 .. -4095

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def parse_fail_spec(text: str) -> dict[int, int]:
    """'3:ENOMEM,5:5' -> {3: ENOMEM, 5: EIO}."""
    failures: dict[int, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        index, _, name = item.partition(":")
        shown = item[:64]
        name = name.strip()
        if name[:1] in "0123456789":
            err: int | None = parse_count(name, f"{MOCK_FAIL_ENV} errno in {shown!r}", maximum=MAX_ERRNO)
        else:
            symbolic = name.isascii() and name.upper().startswith("E")
            found = getattr(errno_module, name.upper(), None) if symbolic else None
            err = found if isinstance(found, int) and found > 0 else None
        if err is None:
            raise UsageError(
                f"{MOCK_FAIL_ENV} item {shown!r} is not K:ERRNO",
                hint="write e.g. 3:ENOMEM (the 3rd map fails with ENOMEM); K counts from 1",
            )
        failures[parse_count(index, f"{MOCK_FAIL_ENV} map number in {shown!r}")] = err
    return failures


def _as_enomem(exc: OSError) -> int:
    """mlock says EAGAIN or ENOMEM where the kernel's pin says ENOMEM."""
    return errno_module.ENOMEM if exc.errno in (errno_module.ENOMEM, errno_module.EAGAIN) else exc.errno or 0


def _union_length(ranges: list[tuple[int, int]]) -> int:
    """Bytes covered by (address, length) ranges, counting each byte once."""
    total, reach = 0, 0
    for start, length in sorted(ranges):
        end = start + length
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def is_mapped(addr: int, length: int) -> bool:
    """mincore fails with ENOMEM when part of the range is not mapped: type1's EFAULT case."""
    pages = -(-length // PAGE_SIZE)
    vec = ctypes.create_string_buffer(min(pages, 1 << 20))
    position = addr
    end = addr + length
    while position < end:
        step = min(end - position, len(vec) * PAGE_SIZE)
        try:
            libc.mincore(position, step, vec)
        except OSError:
            return False
        position += step
    return True


class _GroupClaim:
    """The mock's /dev/vfio/N: held while a container holds the group."""

    def __init__(self, number: int, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"group-{number}.lock"
        self.handle = open(path, "a+")  # noqa: SIM115 - held for the container's lifetime
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise GroupBusyError(
                f"IOMMU group {number} is already in a container (held by {holder})",
                hint="stop the guest or the vfiotask command holding it, then retry",
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.truncate(0)
            self.handle.close()


class MockContainer:
    """Same interface as the real container; maps pin with mlock under one lock."""

    name = "mock"
    parallel_maps = False  # type1's rules: one lock per container

    def __init__(
        self,
        groups: list[int],
        *,
        sysfs_root: Path | None = None,
        host: Host | None = None,
        pgsizes: int = DEFAULT_PGSIZES,
        dma_entry_limit: int | None = None,
        fail: dict[int, int] | None = None,
        claims_dir: Path | None = None,
    ) -> None:
        if not groups:
            raise UsageError("a container needs at least one IOMMU group", hint="give --group N or --device ADDR")
        limit = dma_entry_limit
        if limit is None:
            env = os.environ.get(MOCK_ENTRY_LIMIT_ENV)
            limit = parse_count(env, MOCK_ENTRY_LIMIT_ENV) if env else DEFAULT_DMA_ENTRY_LIMIT
        self.fail = fail if fail is not None else parse_fail_spec(os.environ.get(MOCK_FAIL_ENV, ""))
        self.maps_seen = 0
        self.iommu = Type1Iommu(pin=self._pin, unpin=self._unpin, pgsizes=pgsizes, dma_entry_limit=limit)
        self._pinned: list[tuple[int, int]] = []
        self._shadows: list[tuple[int, int]] = []  # (address, length) of locked anonymous memory
        self.groups: list[int] = []
        self._claims: list[_GroupClaim] = []
        self.host = host or discover(sysfs_root)
        self.claims_dir = claims_dir or state_dir() / "mock-vfio"
        try:
            for number in groups:
                self._attach(number)
        except BaseException:
            self.close()
            raise

    def _attach(self, number: int) -> None:
        if not self.host.groups:
            raise DeviceError(f"IOMMU group {number}: {self.host.paths.sys} has no IOMMU groups at all",
                              hint=ENABLE_IOMMU_HINT + " (or give --sysfs-root DIR for a fixture tree)")
        group = self.host.group(number)
        viability = group_viability(group)
        if not viability.viable:
            raise not_viable_error(self.host, viability, f"cannot open group {number}")
        self._claims.append(_GroupClaim(number, self.claims_dir))
        self.groups.append(number)

    # The pin behind each map: mlock, or a partial mlock undone, for an injected failure.
    def _pin(self, vaddr: int, size: int) -> None:
        if not is_mapped(vaddr, size):
            raise OSError(errno_module.EFAULT, "address not mapped")
        self.maps_seen += 1
        injected = self.fail.get(self.maps_seen)
        if injected is not None:
            half = (size // 2) - (size // 2) % PAGE_SIZE
            if half:
                try:
                    libc.mlock(vaddr, half)
                finally:
                    self._munlock_uncovered(vaddr, half)
            raise OSError(injected, f"injected failure ({MOCK_FAIL_ENV}={self.maps_seen}:{injected})")
        try:
            libc.mlock(vaddr, size)
        except OSError as exc:
            self._munlock_uncovered(vaddr, size)
            raise OSError(_as_enomem(exc), exc.strerror) from None
        self._pinned.append((vaddr, size))
        try:
            self._balance_shadow()
        except OSError as exc:
            self._unpin(vaddr, size)
            raise OSError(_as_enomem(exc), exc.strerror) from None

    def _unpin(self, vaddr: int, size: int) -> None:
        self._pinned.remove((vaddr, size))
        self._munlock_uncovered(vaddr, size)
        self._balance_shadow()

    def _balance_shadow(self) -> None:
        """Keep locked shadow memory equal to what the mappings charge beyond the pages they cover."""
        target = sum(size for _, size in self._pinned) - _union_length(self._pinned)
        held = sum(length for _, length in self._shadows)
        while held > target:
            addr, length = self._shadows.pop()
            keep = max(length - (held - target), 0)
            libc.munmap(addr + keep, length - keep)
            if keep:
                self._shadows.append((addr, keep))
            held -= length - keep
        if held < target:
            length = target - held
            addr = libc.mmap(length, mmap_module.PROT_READ | mmap_module.PROT_WRITE,
                             mmap_module.MAP_PRIVATE | mmap_module.MAP_ANONYMOUS)
            try:
                libc.mlock(addr, length)
            except OSError:
                libc.munmap(addr, length)
                raise
            self._shadows.append((addr, length))

    def _munlock_uncovered(self, vaddr: int, size: int) -> None:
        """munlock the parts of the range that no remaining mapping still pins."""
        pieces = [(vaddr, vaddr + size)]
        for other, length in self._pinned:
            lo, hi = other, other + length
            pieces = [p for start, end in pieces for p in ((start, min(end, lo)), (max(start, hi), end)) if p[0] < p[1]]
        for start, end in pieces:
            try:
                libc.munlock(start, end - start)
            except OSError as exc:
                if exc.errno != errno_module.ENOMEM:
                    raise  # ENOMEM: the range was unmapped, and its lock went with it

    # The interface.
    def info(self) -> IommuInfo:
        return self.iommu.info()

    def map_dma(self, vaddr: int, iova: int, size: int, *, readable: bool = True, writable: bool = True) -> None:
        try:
            self.iommu.map(vaddr, iova, size, readable=readable, writable=writable)
        except OSError as exc:
            raise dma_error(exc.errno or errno_module.EIO, op="DMA map", vaddr=vaddr, iova=iova, size=size,
                            info=self.iommu.info()) from exc

    def unmap_dma(self, iova: int, size: int) -> int:
        try:
            return self.iommu.unmap(iova, size)
        except OSError as exc:
            raise dma_error(exc.errno or errno_module.EIO, op="DMA unmap", iova=iova, size=size,
                            info=self.iommu.info()) from exc

    def mappings(self) -> list[Mapping]:
        return self.iommu.mappings()

    def close(self) -> None:
        self.iommu.unmap_all()
        for claim in reversed(self._claims):
            claim.release()
        self._claims.clear()
        self.groups.clear()

    def __enter__(self) -> MockContainer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

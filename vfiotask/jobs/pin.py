"""Pin: lock a region's pages in parallel, charging each chunk to a locked-memory budget first.

The backend decides what "pinned" means: `mlock` here, VFIO DMA mapping in `vfio_pin`.  Charging
before locking is what lets vfiotask refuse with the numbers and the fix where the kernel would
only say ENOMEM.  A backend whose kernel side is serialized (one VFIO container lock) is run with
one worker: there the parallel part is the prefault that comes before.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from dataclasses import dataclass, field
from typing import Protocol

from vfiotask.engine import Engine, ProgressFn, Task, TaskReport
from vfiotask.errors import ResourceError
from vfiotask.host import libc
from vfiotask.host.cpus import host_engine
from vfiotask.memory.accountant import FIX_HINT, LockedMemoryAccountant
from vfiotask.memory.region import Region
from vfiotask.testpoints import crash_point
from vfiotask.units import MiB, format_size

TASK_NAME = "pin"
MIN_CHUNK = 64 * MiB


class PinBackend(Protocol):
    """Something that pins and unpins ranges of a region.

    `pin` cleans up its own partial work when it fails; `unpin` must not fail.

    Example (a backend that only counts):
        >>> class Counting:
        ...     name, serializes = "counting", False
        ...     def pin(self, region, offset, length): ...
        ...     def unpin(self, region, offset, length): ...
    """

    name: str
    serializes: bool

    def pin(self, region: Region, offset: int, length: int) -> None: ...

    def unpin(self, region: Region, offset: int, length: int) -> None: ...


class MlockBackend:
    """mlock(2): the pages stay resident and count as VmLck against RLIMIT_MEMLOCK.

    Example:
        >>> MlockBackend().pin(region, 0, region.size)   # VmLck grows by region.size
    """

    name = "mlock"
    serializes = False

    def pin(self, region: Region, offset: int, length: int) -> None:
        try:
            libc.mlock(region.addr + offset, length)
        except OSError as exc:
            with contextlib.suppress(OSError):
                libc.munlock(region.addr + offset, length)  # a failed mlock may have locked a part
            if exc.errno in (errno.ENOMEM, errno.EPERM, errno.EAGAIN):
                raise ResourceError(
                    f"the kernel refused to lock {format_size(length)} at offset {offset:#x} ({exc.strerror})",
                    hint=FIX_HINT.format(owner="this process"),
                ) from exc
            raise

    def unpin(self, region: Region, offset: int, length: int) -> None:
        libc.munlock(region.addr + offset, length)


@dataclass
class Pinning:
    """Pins held on a region.  `release()` unpins and uncharges everything; calling it again is harmless.

    Example:
        >>> pinning = pin(region, MlockBackend(), LockedMemoryAccountant())
        >>> pinning.locked_bytes == region.size
        True
        >>> pinning.release()
    """

    region: Region
    backend: PinBackend
    report: TaskReport
    locked_bytes: int
    accountant: LockedMemoryAccountant | None = None
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def release(self) -> None:
        errors: list[BaseException] = []
        while self.ranges:
            start, end = self.ranges.pop()
            try:
                self.backend.unpin(self.region, start, end - start)
            except Exception as exc:  # keep releasing the rest, then report
                errors.append(exc)
            if self.accountant is not None:
                self.accountant.uncharge(end - start)
            self.locked_bytes -= end - start
        if errors:
            raise errors[0]

    def __enter__(self) -> Pinning:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def pin(
    region: Region,
    backend: PinBackend,
    accountant: LockedMemoryAccountant,
    *,
    engine: Engine | None = None,
    max_threads: int = 0,
    progress: ProgressFn | None = None,
    min_chunk: int = MIN_CHUNK,
) -> Pinning:
    """Pin all of `region` with `backend`, in parallel unless the backend serializes.

    Every chunk is charged to `accountant` before it is pinned and uncharged when it is undone,
    so a limit is refused (MemlockLimitError inside TaskFailed, exit 3) before the kernel is asked,
    and a failure leaves nothing pinned or charged.

    Example:
        >>> with pin(region, MlockBackend(), LockedMemoryAccountant(), max_threads=4) as pinning:
        ...     print(pinning.report.threads, pinning.locked_bytes)
    """
    done: list[tuple[int, int]] = []
    lock = threading.Lock()

    def chunk(start: int, end: int) -> None:
        accountant.charge(end - start, f"chunk [{start:#x}, {end:#x}) of the region")
        try:
            backend.pin(region, start, end - start)
            crash_point("pin: chunk pinned")  # pinned: a kill here must leave nothing locked once the holder is gone
        except BaseException:
            accountant.uncharge(end - start)
            raise
        with lock:
            done.append((start, end))

    def undo(start: int, end: int) -> None:
        with lock:
            done.remove((start, end))
        try:
            backend.unpin(region, start, end - start)
        finally:
            accountant.uncharge(end - start)

    task = Task.over_range(
        TASK_NAME,
        0,
        region.size,
        chunk,
        undo=undo,
        min_chunk=max(min_chunk, region.page_size),
        align=region.page_size,
        max_threads=1 if backend.serializes else max_threads,
        progress=progress,
    )
    report = (engine or host_engine()).run(task)
    return Pinning(
        region=region,
        backend=backend,
        report=report,
        locked_bytes=sum(end - start for start, end in done),
        accountant=accountant,
        ranges=sorted(done),
    )

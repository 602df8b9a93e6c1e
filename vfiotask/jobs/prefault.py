"""Prefault: populate a guest RAM region in parallel, before QEMU or the IOMMU needs the pages.

Faulting and zeroing pages is most of the cost of pinning guest RAM (ktask's VFIO numbers), and
it parallelizes where the pin itself does not.  Each chunk is one `MADV_POPULATE_WRITE` through
ctypes, so threads really run at once; kernels without it get a write of one byte per page.

Undo gives back exactly what this job populated: anonymous pages are dropped, a memfd or file
gets holes punched - but only where the file had holes before, so data that was in a file when
the job started survives a failed prefault byte for byte.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from vfiotask.engine import Engine, HelperKind, Part, Plan, ProgressFn, Task
from vfiotask.engine.task import ChunkFn
from vfiotask.errors import HugepageShortageError, UsageError
from vfiotask.host import libc
from vfiotask.host.cpus import host_engine
from vfiotask.host.hugepages import HugepagePools
from vfiotask.memory.region import Region
from vfiotask.testpoints import crash_point
from vfiotask.units import MiB, format_size

TASK_NAME = "prefault"
MIN_CHUNK = 64 * MiB
"""Below this a chunk is not worth a thread (QEMU uses the same floor per preallocation thread)."""
CHUNKS_PER_THREAD = 16
"""Populating 4 GiB with two workers on a 2-CPU VM shared with other work, the nice-19 helper ran at
0.6-0.8 GiB/s against 2-3 GiB/s for the caller, and its last 512 MiB chunk (four per thread) ended
0.15-0.25 s after the caller's; 128 MiB chunks bound that tail, and 32 claims cost well under 1 ms."""

METHOD_POPULATE = "populate_write"
METHOD_TOUCH = "touch"


def default_helpers(region: Region) -> HelperKind:
    """Threads, for every backing: they measured faster than helper processes on memfd and
    hugetlbfs (docs/bench.md, "Prefault"; `vfiotask bench` reports the faster kind per host).

    Processes remain available because an earlier kernel showed the opposite on hugetlbfs.
    Anonymous private memory can only be populated from inside its own address space anyway.
    """
    return HelperKind.THREAD


@dataclass(frozen=True)
class PrefaultReport:
    """What a prefault did; `method` says whether MADV_POPULATE_WRITE or touching was used.

    Example:
        >>> report = prefault(region)
        >>> f"{report.gib_per_s:.1f} GiB/s with {report.threads} {report.helpers}(s)"
    """

    bytes: int
    page_size: int
    threads: int
    chunks: int
    seconds: float
    helpers: str
    method: str
    plan: Plan

    @property
    def gib_per_s(self) -> float:
        return self.bytes / (1 << 30) / self.seconds if self.seconds > 0 else 0.0


class _Populator:
    """Populates `[start, end)` of a region at some address; notes when it had to touch pages."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.touched = False
        self._lock = threading.Lock()

    def __call__(self, addr: int, length: int) -> None:
        if not self.touched:
            try:
                _populate(addr, length)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                with self._lock:
                    self.touched = True
        libc.touch_pages(addr, length, self.page_size)


POPULATE_TRIES = 8
"""How often one range is asked for again after EINTR or EAGAIN before that counts as failure."""


def _populate(addr: int, length: int) -> None:
    """MADV_POPULATE_WRITE, asked again when the kernel says it was interrupted or to try again.

    Populating a page twice changes nothing, so a call the kernel broke off is simply repeated
    (pages it already populated are skipped fast) instead of undoing the whole task for it.
    """
    for tries_left in range(POPULATE_TRIES - 1, -1, -1):
        try:
            libc.madvise(addr, length, libc.MADV_POPULATE_WRITE)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINTR, errno.EAGAIN) or not tries_left:
                raise


class _Releaser:
    """Gives back pages this job populated, keeping every range that held data before."""

    def __init__(self, region: Region, keep: list[tuple[int, int]]) -> None:
        self.region = region
        self.keep = keep

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """`[start, end)` minus the ranges to keep."""
        pieces: list[tuple[int, int]] = []
        position = start
        for kstart, kend in self.keep:
            if kend <= position or kstart >= end:
                continue
            if kstart > position:
                pieces.append((position, kstart))
            position = max(position, kend)
        if position < end:
            pieces.append((position, end))
        return pieces

    def __call__(self, start: int, end: int) -> None:
        if self.region.fd is None:  # anonymous memory held no data before this job
            self.region.release_pages(start, end - start)
            return
        for hstart, hend in self.holes(start, end):
            self.region.release_pages(hstart, hend - hstart)


def _check_hugepages(region: Region) -> None:
    """A hugetlb region can only be populated from pages the pool has: say so before faulting."""
    if not region.hugetlb:
        return
    missing = (region.size - region.allocated_bytes()) // region.page_size if region.shared else (
        region.size // region.page_size
    )
    state = HugepagePools().state(region.page_size)
    if missing > state.free:
        raise HugepageShortageError(
            f"{format_size(region.page_size)} hugepage pool too small: {missing} pages needed, {state.free} free",
            hint="add pages to the pool (vfiotask hugepages) or ask for less memory",
        )


def _parts(region: Region, parts: Sequence[tuple[int, int, int | None]] | None) -> list[Part]:
    if parts is None:
        return [Part(0, region.size, region.node)]
    result = [Part(offset, size, node) for offset, size, node in parts]
    for part in result:
        if part.start < 0 or part.end > region.size or part.start % region.page_size or part.size % region.page_size:
            raise UsageError(
                f"part [{part.start:#x}, {part.end:#x}) is outside the region or not page aligned",
                hint=f"give parts inside [0, {region.size:#x}) on {format_size(region.page_size)} boundaries",
            )
    return result


def prefault(
    region: Region,
    *,
    engine: Engine | None = None,
    max_threads: int = 0,
    helpers: HelperKind | None = None,
    parts: Sequence[tuple[int, int, int | None]] | None = None,
    progress: ProgressFn | None = None,
    min_chunk: int = MIN_CHUNK,
) -> PrefaultReport:
    """Populate every page of `region` in parallel; on failure give back what was populated.

    `parts` are `(offset, size, node)` pieces whose chunks should run on that node's CPUs
    (default: the whole region, on the region's node).  `helpers` defaults to
    `default_helpers` (threads).  Raises TaskFailed (its exit status is the cause's),
    HugepageShortageError before anything is faulted, or KeyboardInterrupt after undoing.

    Example:
        >>> with open_region(RegionSpec(size=1 << 30, backing="memfd")) as region:
        ...     report = prefault(region, max_threads=2)
        >>> report.bytes, report.method
        (1073741824, 'populate_write')
    """
    kind = helpers or default_helpers(region)
    if kind is HelperKind.PROCESS and not region.shared:
        raise UsageError(
            "anonymous memory cannot be populated by helper processes",
            hint="use thread helpers, or a memfd or file backing",
        )
    _check_hugepages(region)
    keep = region.data_ranges() if region.shared else []
    release = _Releaser(region, keep)
    populate = _Populator(region.page_size)

    def populating(addr: int, populator: _Populator) -> ChunkFn:
        """A chunk function over the region mapped at `addr`; a failing chunk cleans up its own partial work."""

        def chunk(start: int, end: int) -> None:
            try:
                populator(addr + start, end - start)
                crash_point("prefault: chunk populated")  # mid-populate: this chunk's pages are in, others may not be
            except BaseException:
                release(start, end)
                raise

        return chunk

    factory = None
    if kind is HelperKind.PROCESS:

        def factory() -> ChunkFn:  # runs in each helper process: its own mapping, its own fallback flag
            return populating(region.map_again(), _Populator(region.page_size))

    task = Task(
        name=TASK_NAME,
        chunk=populating(region.addr, populate),
        parts=_parts(region, parts),
        undo=release,
        min_chunk=max(min_chunk, region.page_size),
        align=region.page_size,
        max_threads=max_threads,
        progress=progress,
        helpers=kind,
        process_chunk_factory=factory,
        chunks_per_thread=CHUNKS_PER_THREAD,
    )
    report = (engine or host_engine()).run(task)
    return PrefaultReport(
        bytes=task.size,
        page_size=region.page_size,
        threads=report.threads,
        chunks=report.chunks,
        seconds=report.seconds,
        helpers=report.helpers.value,
        method=METHOD_TOUCH if populate.touched else METHOD_POPULATE,
        plan=report.plan,
    )

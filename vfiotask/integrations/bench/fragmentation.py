"""Hugepages from fragmented memory: what a pool gets at the first ask, and what dropping clean
caches and compacting the node (what `HugepageReserver` does before failing) wins on top.

Memory is fragmented on purpose: a process maps anonymous memory, touches every page, then
gives back every other 4 KiB page (MADV_DONTNEED), so no 2 MiB block of what it touched is
free; a file is read into the page cache beside it.  Then the node's 2 MiB pool is asked for
more pages than its free lists hold in 2 MiB blocks, once as a plain write, and once more after
`make_room`.  Every pool, mapping and file is given back at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vfiotask.errors import ResourceError
from vfiotask.host import libc
from vfiotask.host.freemem import NodeFreeMemory, free_memory
from vfiotask.host.hugepages import HugepagePools
from vfiotask.integrations.bench.common import BenchOptions
from vfiotask.units import MiB, format_size

PAGE = 4096
HUGE = 2 * MiB
NODE = 0
LIMIT = 8 << 30  # what a benchmark may take in all


@contextlib.contextmanager
def fragmented(nbytes: int) -> Iterator[int]:
    """Touch `nbytes` of anonymous memory and free every other page; yields the bytes kept."""
    addr = libc.mmap(nbytes, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    try:
        libc.madvise(addr, nbytes, libc.MADV_POPULATE_WRITE)
        for offset in range(PAGE, nbytes, 2 * PAGE):
            libc.madvise(addr + offset, PAGE, libc.MADV_DONTNEED)
        yield nbytes // 2
    finally:
        libc.munmap(addr, nbytes)


@contextlib.contextmanager
def cached_file(nbytes: int) -> Iterator[Path]:
    """A file of `nbytes`, written, synced and read back, so its pages are clean page cache."""
    handle, name = tempfile.mkstemp(prefix="vfiotask-bench-", dir="/var/tmp")
    path = Path(name)
    try:
        block = b"\1" * MiB
        with os.fdopen(handle, "wb") as out:
            for _ in range(nbytes // MiB):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        with open(path, "rb") as back:
            while back.read(MiB):
                pass
        yield path
    finally:
        path.unlink(missing_ok=True)


def _blocks(memory: NodeFreeMemory | None) -> list[int]:
    return list(memory.blocks) if memory else []


def measure(fragment: int, cache: int) -> dict[str, Any]:
    """Ask for as many 2 MiB pages as the benchmark's memory limit leaves beside what is kept."""
    pools = HugepagePools()
    before = pools.state(HUGE, NODE).total
    result: dict[str, Any] = {"node": NODE, "fragmented_bytes": fragment, "page_cache_bytes": cache,
                              "blocks_before": _blocks(free_memory().get(NODE))}
    with fragmented(fragment) as kept, cached_file(cache):
        memory = free_memory().get(NODE)
        result["kept_bytes"] = kept
        result["blocks_fragmented"] = _blocks(memory)
        now = memory.pages_now(HUGE) if memory else 0
        wanted = (LIMIT - kept) // HUGE
        if wanted <= now:
            raise ResourceError(f"{now} pages are free in 2 MiB blocks, as many as the run may ask for "
                                f"({wanted}): memory is not fragmented enough to measure",
                                hint="give a larger --size")
        result.update(free_2m_blocks=now, requested_pages=wanted)
        try:
            began = time.monotonic()
            first = pools.set_total(HUGE, before + wanted, NODE) - before
            result.update(first_pages=first, first_seconds=time.monotonic() - began)
            began = time.monotonic()
            pools.make_room(NODE)
            again = pools.set_total(HUGE, before + wanted, NODE) - before
            result.update(after_compaction_pages=again, won_pages=again - first,
                          retry_seconds=time.monotonic() - began)
        finally:
            pools.set_total(HUGE, before, NODE)
    return result


def run(options: BenchOptions) -> dict[str, Any]:
    size = options.size or 4 << 30
    if size // 2 >= LIMIT:
        raise ResourceError(f"--size {format_size(size)} keeps more than a benchmark may take",
                            hint=f"give less than {format_size(2 * LIMIT)}")
    return measure(fragment=size, cache=size)


def render(result: dict[str, Any]) -> str:
    return "\n".join([
        f"node {result['node']}: fragmented {format_size(result['fragmented_bytes'])} (kept "
        f"{format_size(result['kept_bytes'])}), {format_size(result['page_cache_bytes'])} of clean page cache",
        f"free blocks by order before:      {' '.join(map(str, result['blocks_before']))}",
        f"free blocks by order fragmented:  {' '.join(map(str, result['blocks_fragmented']))}",
        f"asked for {result['requested_pages']} x 2 MiB ({result['free_2m_blocks']} free in 2 MiB blocks)",
        f"first ask:              {result['first_pages']} pages in {result['first_seconds']:.2f} s",
        f"after drop + compact:   {result['after_compaction_pages']} pages (+{result['won_pages']}) in "
        f"{result['retry_seconds']:.2f} s",
    ])

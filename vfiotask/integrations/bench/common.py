"""How every vfiotask benchmark measures, so that numbers from different suites mean the same.

These VMs get their RAM from the host lazily and hand freed RAM back, so a run on cold memory
is much slower than the same run on warm memory (docs/bench.md), and run order alone changes results.
Therefore: warm the memory right before each measured run, interleave the variants (rotating
the order every round), take medians, and compare against the machine's own parallel bound
measured in the same run - N separate processes, each populating its share at once.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vfiotask.errors import HugepageShortageError, VfiotaskError
from vfiotask.host import libc
from vfiotask.units import GiB, MiB, align_down

DEFAULT_REPEAT = 5


@dataclass(frozen=True)
class BenchOptions:
    """What `vfiotask bench` was asked, already checked: every suite takes this one type and
    leaves out what does not apply to it (None: the suite's own default)."""

    size: int | None = None
    backing: str | None = None
    threads: tuple[int, ...] | None = None
    repeat: int = DEFAULT_REPEAT
    qemu: bool = True
    device: str | None = None  # a PCI address (vfio-start)
    uri: str | None = None  # a libvirt URI (vfio-start)


WARM_EXTRA = 1.1
"""Warm a tenth more than is measured: the kernel does not hand back exactly the same pages."""


def warm_host_memory(nbytes: int) -> float:
    """Fill and free a little more than `nbytes` of anonymous memory; returns the seconds it took.

    Afterwards the guest's free memory is backed by the host again, so the next run measures
    the kernel's work, not the host's.
    """
    length = align_down(int(nbytes * WARM_EXTRA), 4096) or 4096
    began = time.monotonic()
    addr = libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
    try:
        libc.madvise(addr, length, libc.MADV_POPULATE_WRITE)
    finally:
        libc.munmap(addr, length)
    return time.monotonic() - began


def gib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / GiB / seconds if seconds > 0 else 0.0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Variant:
    """One thing measured: `run()` does the timed work and returns its seconds.

    `prepare` and `cleanup` run around it untimed (opening and closing a region, say), after
    the host memory was warmed.
    """

    name: str
    run: Callable[[], float]
    prepare: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None
    info: dict[str, object] = field(default_factory=dict)


_progress: list[Callable[[int, int], None]] = []


@contextlib.contextmanager
def reporting(progress: Callable[[int, int], None] | None) -> Iterator[None]:
    """Runs of `interleave` inside report (runs done, runs in all) to `progress` (a terminal line):
    one place for every suite, which need not pass it down."""
    if progress is None:
        yield
        return
    _progress.append(progress)
    try:
        yield
    finally:
        _progress.remove(progress)


def interleave(variants: Sequence[Variant], repeat: int, warm: Callable[[], object]) -> dict[str, list[float]]:
    """Run every variant `repeat` times, one round at a time, the order rotated each round."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    runs, done = repeat * len(variants), 0
    for round_index in range(repeat):
        shift = round_index % max(len(variants), 1)
        for variant in [*variants[shift:], *variants[:shift]]:
            warm()
            variant.prepare()
            try:
                times[variant.name].append(variant.run())
            finally:
                variant.cleanup()
            done += 1
            for progress in _progress:
                progress(done, runs)
    return times


def summary(nbytes: int, seconds: list[float]) -> dict[str, object]:
    middle = median(seconds)
    return {
        "seconds": [round(s, 6) for s in seconds],
        "median_seconds": round(middle, 6),
        "gib_per_s": round(gib_per_s(nbytes, middle), 3),
    }


def populate_in_processes(
    count: int, open_share: Callable[[int], tuple[int, int]], close_share: Callable[[int], None] | None = None
) -> float:
    """The machine's parallel bound: `count` separate processes, each populating its own share at once.

    `open_share(i)` runs in child i and returns (address, length) of the memory it populates
    (mapped in that child).  The children get ready first; the time is from the start signal
    until the last of them is done.  `close_share(i)` runs in the parent afterwards (removing a
    file, say).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    children: list[int] = []
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # child: no Python-level cleanup, only the work and _exit
                status = 1
                try:
                    os.close(ready_r)
                    os.close(go_w)
                    os.close(done_r)
                    addr, length = open_share(index)
                    os.write(ready_w, b"r")
                    os.close(ready_w)  # so that a sibling failing to get ready ends the parent's wait
                    if os.read(go_r, 1) == b"g":  # nothing: the parent gave up
                        libc.madvise(addr, length, libc.MADV_POPULATE_WRITE)
                        os.write(done_w, b"d")
                        status = 0
                finally:
                    os._exit(status)
            children.append(pid)
        os.close(ready_w)
        os.close(go_r)
        os.close(done_w)
        for _ in range(count):
            if os.read(ready_r, 1) != b"r":
                raise VfiotaskError("a bound process failed to map its share", hint="benchmark a smaller --size")
        began = time.monotonic()
        os.write(go_w, b"g" * count)
        for _ in range(count):
            if os.read(done_r, 1) != b"d":
                raise VfiotaskError("a bound process failed to populate its share", hint="benchmark a smaller --size")
        return time.monotonic() - began
    finally:
        for fd in (ready_r, go_w, done_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if close_share is not None:
            for index in range(count):
                close_share(index)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in (headers, *rows)
    )


@contextlib.contextmanager
def removing(path: Path) -> Iterator[Path]:
    """Yield `path`; remove it afterwards whatever happened."""
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def grown_pool(pages: int) -> Iterator[None]:
    """`pages` more 2 MiB pages in the host's pool (an administrator's boot-time pool), all or
    none: a shortfall is refused before anything is measured.  The pool is put back afterwards."""
    from vfiotask.host.hugepages import HugepagePools

    pools = HugepagePools()
    before = pools.state(2 * MiB).total
    try:
        got = pools.set_total(2 * MiB, before + pages)
        if got - before < pages:
            raise HugepageShortageError(
                f"the 2.0 MiB pool grew by {got - before} pages, {pages} needed for the benchmark",
                hint="free memory or benchmark a smaller --size",
            )
        yield
    finally:
        pools.set_total(2 * MiB, before)

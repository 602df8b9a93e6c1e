"""The prefault suite: vfiotask's parallel prefault against 1 thread, the machine's parallel bound
and QEMU's own preallocation, on the same size and backing, interleaved, medians.

Variants per backing, for each thread count N:
- `vfiotask N thread(s)` / `vfiotask N processes`: `prefault()` with that helper kind;
- `bare N threads`: N plain threads, each one MADV_POPULATE_WRITE of its 1/N of one region;
- `bound N processes`: N separate processes, each populating its own size/N region at once;
- `qemu prealloc-threads=N`: QEMU 7.2 starting with a preallocated backend (when installed);
plus `qemu no prealloc`, QEMU's start-up alone.  Ratios are taken between medians of one run;
`of best` is the faster of the bound and the bare threads over ours.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfiotask.engine import CpuPolicy, HelperKind
from vfiotask.engine.priority import LOWEST
from vfiotask.errors import UsageError
from vfiotask.host.cpus import host_engine
from vfiotask.host.mounts import mount_of
from vfiotask.integrations.bench import common, qemu
from vfiotask.integrations.bench.common import BenchOptions, grown_pool
from vfiotask.jobs.prefault import default_helpers, prefault
from vfiotask.memory.region import Region, RegionSpec, open_region, recover_files
from vfiotask.units import MiB, align_down, format_size

DEFAULT_SIZE = 4 << 30
DEFAULT_BACKINGS = "memfd,hugetlbfs"
DEFAULT_THREADS = (1, 2)
HUGE_2M = 2 * MiB


@dataclass
class Backing:
    """Where a variant's memory comes from: 'anon', 'memfd', or files in `directory`."""

    name: str
    kind: str  # "anon" | "memfd" | "file"
    directory: Path | None = None
    page_size: int = 4096
    hugetlb: bool = False

    def spec(self, size: int, tag: str) -> RegionSpec:
        if self.directory is None:
            return RegionSpec(size=size, backing=self.kind)
        return RegionSpec(size=size, backing=str(self.directory / f"vfiotask-bench-{tag}.ram"))

    def file(self, tag: str) -> Path | None:
        return None if self.directory is None else self.directory / f"vfiotask-bench-{tag}.ram"


def _thread_counts(counts: tuple[int, ...]) -> list[int]:
    cpus = os.cpu_count() or 1
    if max(counts) > cpus:  # the bound variant forks one process per count
        raise UsageError(f"--threads {max(counts)} is more than the {cpus} CPUs of this host",
                         hint=f"give counts of 1 to {cpus}")
    return sorted(set(counts))


@contextlib.contextmanager
def _hugetlbfs(size: int) -> Iterator[Path]:
    """A private 2 MiB hugetlbfs mount with enough pages in the pool; all put back afterwards."""
    if os.geteuid() != 0:
        raise UsageError("the hugetlbfs backing needs root to mount and size a pool",
                         hint="run as root, or give --backing DIR on an existing hugetlbfs mount")
    with tempfile.TemporaryDirectory(prefix="vfiotask-bench-huge-") as scratch, grown_pool(size // HUGE_2M + 1):
        mountpoint = Path(scratch)
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mountpoint)], check=True,
                       capture_output=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)


def _backing(name: str, size: int, stack: contextlib.ExitStack) -> Backing:
    if name in ("anon", "memfd"):
        return Backing(name=name, kind=name)
    directory = stack.enter_context(_hugetlbfs(size)) if name == "hugetlbfs" else Path(name)
    if not directory.is_dir():
        raise UsageError(f"--backing {name}: not a directory", hint="give anon, memfd, hugetlbfs or a directory")
    mount = mount_of(directory)
    if mount.fstype not in ("tmpfs", "hugetlbfs"):
        raise UsageError(f"--backing {name} is on {mount.fstype}, not tmpfs or hugetlbfs",
                         hint="benchmark files on tmpfs or hugetlbfs")
    hugetlb = mount.fstype == "hugetlbfs"
    page_size = os.statvfs(directory).f_bsize if hugetlb else 4096
    return Backing(name=name, kind="file", directory=directory, page_size=page_size, hugetlb=hugetlb)


class _Ours:
    """A vfiotask prefault variant: a fresh region per run, opened and closed untimed."""

    def __init__(self, backing: Backing, size: int, threads: int, helpers: HelperKind,
                 helper_nice: int = LOWEST) -> None:
        self.backing, self.size, self.threads, self.helpers = backing, size, threads, helpers
        self.region: Region | None = None
        self.used: list[int] = []
        # Busy CPUs count as usable: a variant asking for N workers gets N, and the previous
        # variant's own load must not make this one look busy.
        self.engine = host_engine(policy=CpuPolicy(busy_threshold=1.0, helper_nice=helper_nice))

    def prepare(self) -> None:
        self.region = open_region(self.backing.spec(self.size, "ours"))

    def run(self) -> float:
        assert self.region is not None
        began = time.monotonic()
        report = prefault(self.region, engine=self.engine, max_threads=self.threads, helpers=self.helpers)
        seconds = time.monotonic() - began
        self.used.append(report.threads)
        return seconds

    def cleanup(self) -> None:
        if self.region is not None:
            self.region.close(remove_created=True)
            self.region = None


def _bound(backing: Backing, size: int, count: int) -> Callable[[], float]:
    share = align_down(size // count, backing.page_size)
    regions: dict[int, Region] = {}

    def open_share(index: int) -> tuple[int, int]:
        region = open_region(backing.spec(share, f"bound-{index}"))
        regions[index] = region  # lives until the child exits
        return region.addr, region.size

    def close_share(index: int) -> None:
        path = backing.file(f"bound-{index}")
        if path is not None:  # its child is gone: the file and its journal entry go together
            recover_files(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def run() -> float:
        return common.populate_in_processes(count, open_share, close_share) * size / (share * count)

    return run


class _Bare:
    """N plain threads, each one MADV_POPULATE_WRITE of its 1/N of the same region: no engine, no
    planning, no chunks; what the threads of one process can do at best."""

    def __init__(self, backing: Backing, size: int, threads: int) -> None:
        self.backing, self.size, self.threads = backing, size, threads
        self.region: Region | None = None

    def prepare(self) -> None:
        self.region = open_region(self.backing.spec(self.size, "bare"))

    def run(self) -> float:
        import threading

        from vfiotask.host import libc

        region = self.region
        assert region is not None
        share = region.size // self.threads // region.page_size * region.page_size
        starts = [index * share for index in range(self.threads)]
        lengths = [share] * (self.threads - 1) + [region.size - starts[-1]]
        workers = [threading.Thread(target=libc.madvise, args=(region.addr + start, length, libc.MADV_POPULATE_WRITE))
                   for start, length in zip(starts, lengths, strict=True)]
        began = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.monotonic() - began

    def cleanup(self) -> None:
        if self.region is not None:
            self.region.close(remove_created=True)
            self.region = None


def _qemu(backing: Backing, size: int, threads: int, prealloc: bool = True) -> Callable[[], float]:
    def run() -> float:
        return qemu.time_prealloc(size, threads, backing.file("qemu"), prealloc=prealloc,
                                  anonymous=backing.kind == "anon")

    return run


def _warm(backing: Backing, size: int) -> Callable[[], object]:
    def warm() -> object:
        seconds = common.warm_host_memory(size)
        if backing.hugetlb:  # the pool's own pages: populate and free them once
            with open_region(backing.spec(size, "warm")) as region:
                prefault(region, max_threads=1)
                region.close(remove_created=True)
        return seconds

    return warm


def _variants(backing: Backing, size: int, counts: list[int], use_qemu: bool) -> tuple[list[common.Variant], dict]:
    variants: list[common.Variant] = []
    ours: dict[str, _Ours] = {}
    kinds = [HelperKind.THREAD] + ([HelperKind.PROCESS] if backing.kind != "anon" else [])
    for count in counts:
        for kind in kinds:
            if kind is HelperKind.PROCESS and count == 1:
                continue
            name = f"vfiotask {count} {kind.value}{'es' if kind is HelperKind.PROCESS else 's' if count > 1 else ''}"
            variant = _Ours(backing, size, count, kind)
            ours[name] = variant
            variants.append(common.Variant(name, variant.run, variant.prepare, variant.cleanup,
                                           {"threads": count, "helpers": kind.value}))
        if count > 1:  # QEMU's threads run at the caller's priority: compare at equal priority too
            name = f"vfiotask {count} threads nice 0"
            variant = ours[name] = _Ours(backing, size, count, HelperKind.THREAD, helper_nice=0)
            variants.append(common.Variant(name, variant.run, variant.prepare, variant.cleanup,
                                           {"threads": count, "helpers": "thread", "helper_nice": 0}))
        bare = _Bare(backing, size, count)
        variants.append(common.Variant(f"bare {count} thread{'s' if count > 1 else ''}", bare.run, bare.prepare,
                                       bare.cleanup, {"threads": count}))
        if count > 1:
            variants.append(common.Variant(f"bound {count} processes", _bound(backing, size, count),
                                           info={"threads": count}))
        if use_qemu:
            variants.append(common.Variant(f"qemu prealloc-threads={count}", _qemu(backing, size, count),
                                           info={"threads": count}))
    if use_qemu:
        variants.append(common.Variant("qemu no prealloc", _qemu(backing, size, 1, prealloc=False)))
    return variants, ours


def _measure_backing(backing: Backing, size: int, counts: list[int], repeat: int, use_qemu: bool) -> dict[str, Any]:
    variants, ours = _variants(backing, size, counts, use_qemu)
    times = common.interleave(variants, repeat, _warm(backing, size))
    table: dict[str, dict[str, Any]] = {}
    for variant in variants:
        entry = common.summary(size, times[variant.name])
        entry.update(variant.info)
        if variant.name in ours:
            entry["threads_used"] = sorted(set(ours[variant.name].used))
        table[variant.name] = entry
    medians = {name: entry["median_seconds"] for name, entry in table.items()}
    base = medians.get("vfiotask 1 thread")
    result: dict[str, Any] = {"backing": backing.name, "page_size": backing.page_size, "variants": table,
                              "speedup": {}, "efficiency": {}, "of_best": {}, "vs_qemu": {}, "faster_helpers": {}}
    for name, entry in table.items():
        if name not in ours:
            continue
        count = entry["threads"]
        if base:
            result["speedup"][name] = round(base / medians[name], 3)
        if f"bound {count} processes" in medians:
            result["efficiency"][name] = round(medians[f"bound {count} processes"] / medians[name], 3)
        if f"qemu prealloc-threads={count}" in medians:
            result["vs_qemu"][name] = round(medians[f"qemu prealloc-threads={count}"] / medians[name], 3)
        references = [medians[key] for key in (f"bound {count} processes", f"bare {count} threads",
                                               f"bare {count} thread") if key in medians]
        if references:  # the faster of the machine's bound and bare threads of one process
            result["of_best"][name] = round(min(references) / medians[name], 3)
    for count in counts:
        thread_name = f"vfiotask {count} threads"
        process_name = f"vfiotask {count} processes"
        if thread_name in medians and process_name in medians:
            faster = "process" if medians[process_name] < medians[thread_name] else "thread"
            result["faster_helpers"][str(count)] = faster
    probe = backing.spec(backing.page_size, "probe")
    with open_region(probe) as region:
        result["default_helpers"] = default_helpers(region).value
        region.close(remove_created=True)
    return result


def run(options: BenchOptions) -> dict[str, Any]:
    """Measure every backing named in `options.backing` (comma separated); see the module docstring."""
    size = options.size or DEFAULT_SIZE
    counts = _thread_counts(options.threads or DEFAULT_THREADS)
    repeat = options.repeat
    names = [n.strip() for n in (options.backing or DEFAULT_BACKINGS).split(",") if n.strip()]
    use_qemu = qemu.qemu_binary() is not None and options.qemu
    result: dict[str, Any] = {"suite": "prefault", "size": size, "repeat": repeat, "threads": counts,
                              "qemu": qemu.qemu_binary(), "warm": True, "backings": []}
    for name in names:
        with contextlib.ExitStack() as stack:
            backing = _backing(name, size, stack)
            share = size // max(counts)
            if size % backing.page_size or share % backing.page_size or share < backing.page_size:
                raise UsageError(f"--size {format_size(size)} does not split into {format_size(backing.page_size)} "
                                 f"pages for {max(counts)} processes", hint="use a multiple of 2 MiB x threads")
            result["backings"].append(_measure_backing(backing, size, counts, repeat, use_qemu))
    return result


def render(result: dict[str, Any]) -> str:
    size = format_size(result["size"])
    lines = [f"prefault of {size}, warm host memory, medians of {result['repeat']} interleaved runs"]
    for entry in result["backings"]:
        rows = []
        for name, variant in entry["variants"].items():
            rows.append([
                name,
                f"{variant['median_seconds']:.3f}",
                f"{variant['gib_per_s']:.2f}",
                _ratio(entry["speedup"].get(name)),
                _percent(entry["efficiency"].get(name)),
                _percent(entry["of_best"].get(name)),
                _ratio(entry["vs_qemu"].get(name)),
            ])
        lines += ["", f"{entry['backing']} ({format_size(entry['page_size'])} pages; default helpers: "
                  f"{entry['default_helpers']})"]
        lines.append(common.render_table(["variant", "median s", "GiB/s", "speedup", "of bound", "of best", "vs QEMU"],
                                         rows))
        if entry["faster_helpers"]:
            lines.append("faster helpers: " + ", ".join(f"{n}: {k}" for n, k in entry["faster_helpers"].items()))
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"

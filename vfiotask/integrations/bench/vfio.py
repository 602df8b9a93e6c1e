"""The vfio suite: pinning guest RAM through a DMA container, split between prefault and map.

type1 maps one chunk at a time under the container's lock, and a map of unpopulated memory
faults and zeroes every page inside that lock: one thread does all the work, as the kernel
does for QEMU.  Faulting the pages first, in parallel, leaves the map only the pinning.  The
variants, on one memfd region of --size (default 4 GiB), through the mock container (the
kernel's rules over real mlock, so the pinning is the kernel's own work):

- `1 thread: fault+map`: map every chunk of the unpopulated region (the kernel alone);
- `prefault N, then map`: parallel prefault with N threads, then the maps;
- `N threads: prefault+map per chunk`: each worker populates a chunk and maps it, so the maps
  of some chunks overlap the faulting of others (the maps still serialize on the lock).

Warm host memory before each run, variants interleaved, medians of --repeat (default 5), ratios
within the run.  Also the per-map cost of the layers: the mock's map+unmap of one prefaulted
4 KiB page against bare mlock+munlock of it, and the userspace part of the real layer (building
the struct and entering the kernel, on a file that rejects the ioctl).  The real layer's kernel
cost needs /dev/vfio and a viable group (VFIOTASK_BENCH_VFIO_GROUP=N); otherwise it is reported
as not measurable here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from vfiotask.devices import uapi
from vfiotask.devices.container import DmaContainer
from vfiotask.devices.mock import MockContainer
from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice
from vfiotask.devices.syscalls import LibcSyscalls
from vfiotask.engine import Task
from vfiotask.host import libc
from vfiotask.host.cpus import host_engine
from vfiotask.integrations.bench import common
from vfiotask.integrations.bench.common import BenchOptions
from vfiotask.jobs.prefault import prefault
from vfiotask.memory.region import Region, RegionSpec, open_region
from vfiotask.units import MiB, align_down, format_size, parse_count

DEFAULT_SIZE = 4 << 30
DEFAULT_THREADS = 2
IOVA_BASE = 1 << 32
MAP_CHUNK = 128 * MiB  # the chunk ktask's VFIO user settled on
OVERHEAD_PAGES = 2048
GROUP_ENV = "VFIOTASK_BENCH_VFIO_GROUP"


def _bench_host(directory: Path) -> Host:
    """A one-group host with one device on vfio-pci, for the mock container (no fixture needed)."""
    paths = HostPaths(directory, directory, directory, fixture=True)
    device = PciDevice("0000:01:00.0", "10de", "1b80", 0x030000, "vfio-pci", 0, None, None, directory)
    return Host(paths=paths, source="sysfs", devices={device.address: device},
                groups={0: IommuGroup(0, (device,))})


def _chunks(size: int) -> list[tuple[int, int]]:
    chunk = max(align_down(min(MAP_CHUNK, size // 8), 2 * MiB), 2 * MiB)
    return [(start, min(chunk, size - start)) for start in range(0, size, chunk)]


class _Run:
    """One measured run: a fresh region and container, closed afterwards."""

    def __init__(self, size: int, host: Host, claims: Path) -> None:
        self.size, self.host, self.claims = size, host, claims
        self.region: Region | None = None
        self.container: MockContainer | None = None
        self.split: dict[str, float] = {}

    def prepare(self) -> None:
        self.region = open_region(RegionSpec(size=self.size, backing="memfd"))
        self.container = MockContainer([0], host=self.host, claims_dir=self.claims, fail={})

    def cleanup(self) -> None:
        if self.container is not None:
            self.container.close()
        if self.region is not None:
            self.region.close()
        self.container = self.region = None

    def map_all(self) -> None:
        assert self.region is not None and self.container is not None
        for offset, length in _chunks(self.size):
            self.container.map_dma(self.region.addr + offset, IOVA_BASE + offset, length)

    def serial(self) -> float:
        began = time.monotonic()
        self.map_all()
        return time.monotonic() - began

    def prefault_then_map(self, threads: int) -> float:
        assert self.region is not None
        began = time.monotonic()
        prefault(self.region, max_threads=threads)
        middle = time.monotonic()
        self.map_all()
        end = time.monotonic()
        self.split = {"prefault": middle - began, "map": end - middle}
        return end - began

    def pipelined(self, threads: int) -> float:
        region, container = self.region, self.container
        assert region is not None and container is not None
        chunk = _chunks(self.size)[0][1]

        def work(start: int, end: int) -> None:
            libc.madvise(region.addr + start, end - start, libc.MADV_POPULATE_WRITE)
            container.map_dma(region.addr + start, IOVA_BASE + start, end - start)

        began = time.monotonic()
        host_engine().run(Task.over_range("vfio-bench", 0, self.size, work, min_chunk=chunk, align=chunk,
                                             max_threads=threads))
        return time.monotonic() - began


def _per_map_overhead(container: DmaContainer, repeat: int) -> dict[str, Any]:
    """Seconds per map+unmap of one prefaulted page: mock layer vs bare mlock+munlock."""
    length = OVERHEAD_PAGES * 4096
    region = open_region(RegionSpec(size=length, backing="memfd"))
    try:
        libc.madvise(region.addr, length, libc.MADV_POPULATE_WRITE)
        mock_times, bare_times = [], []
        for _ in range(repeat):
            began = time.monotonic()
            for page in range(OVERHEAD_PAGES):
                libc.mlock(region.addr + page * 4096, 4096)
                libc.munlock(region.addr + page * 4096, 4096)
            bare_times.append(time.monotonic() - began)
            began = time.monotonic()
            for page in range(OVERHEAD_PAGES):
                container.map_dma(region.addr + page * 4096, IOVA_BASE + page * 4096, 4096)
                container.unmap_dma(IOVA_BASE + page * 4096, 4096)
            mock_times.append(time.monotonic() - began)
    finally:
        region.close()
    bare = common.median(bare_times) / OVERHEAD_PAGES
    mock = common.median(mock_times) / OVERHEAD_PAGES
    return {"bare_mlock_us": round(bare * 1e6, 3), "mock_map_us": round(mock * 1e6, 3),
            "mock_overhead_us": round((mock - bare) * 1e6, 3)}


def _real_userspace_overhead(repeat: int) -> float:
    """Microseconds per MAP_DMA struct built and sent to the kernel (rejected by /dev/null)."""
    sys = LibcSyscalls()
    fd = os.open("/dev/null", os.O_RDWR)
    times = []
    try:
        for _ in range(repeat):
            began = time.monotonic()
            for page in range(OVERHEAD_PAGES):
                request = uapi.vfio_iommu_type1_dma_map(argsz=ctypes.sizeof(uapi.vfio_iommu_type1_dma_map), flags=3,
                                                        vaddr=page * 4096, iova=IOVA_BASE + page * 4096, size=4096)
                with contextlib.suppress(OSError):
                    sys.ioctl(fd, uapi.VFIO_IOMMU_MAP_DMA, request)
            times.append(time.monotonic() - began)
    finally:
        os.close(fd)
    return round(common.median(times) / OVERHEAD_PAGES * 1e6, 3)


def _real_kernel_overhead(repeat: int) -> dict[str, Any]:
    group = os.environ.get(GROUP_ENV)
    if not Path("/dev/vfio/vfio").exists():
        return {"measured": False, "why": "not measurable here: no /dev/vfio (no IOMMU on this host)"}
    if not group:
        return {"measured": False, "why": f"/dev/vfio exists; set {GROUP_ENV}=N (a viable group) to measure"}
    from vfiotask.devices.real import open_real_container

    with open_real_container([parse_count(group, GROUP_ENV, minimum=0)]) as container:
        measured = _per_map_overhead(container, repeat)
    return {"measured": True, "real_map_us": measured["mock_map_us"], "bare_mlock_us": measured["bare_mlock_us"]}


def run(options: BenchOptions) -> dict[str, Any]:
    """The three variants at `options.size`; of several thread counts the largest is used."""
    size = options.size or DEFAULT_SIZE
    threads = max(options.threads or (DEFAULT_THREADS,))
    repeat = max(options.repeat, 1)
    with tempfile.TemporaryDirectory(prefix="vfiotask-bench-vfio-") as scratch:
        host = _bench_host(Path(scratch))
        claims = Path(scratch) / "claims"
        runs = {name: _Run(size, host, claims) for name in ("serial", "split", "pipelined")}
        split_parts: list[dict[str, float]] = []

        def split_run() -> float:
            seconds = runs["split"].prefault_then_map(threads)
            split_parts.append(dict(runs["split"].split))
            return seconds

        names = {"serial": "1 thread: fault+map", "split": f"prefault {threads}, then map",
                 "pipelined": f"{threads} threads: prefault+map per chunk"}
        variants = [
            common.Variant(names["serial"], runs["serial"].serial, runs["serial"].prepare, runs["serial"].cleanup),
            common.Variant(names["split"], split_run, runs["split"].prepare, runs["split"].cleanup),
            common.Variant(names["pipelined"], lambda: runs["pipelined"].pipelined(threads),
                           runs["pipelined"].prepare, runs["pipelined"].cleanup),
        ]
        times = common.interleave(variants, repeat, lambda: common.warm_host_memory(size))
        with MockContainer([0], host=host, claims_dir=claims, fail={}) as container:
            overhead = _per_map_overhead(container, repeat)
    serial = common.median(times[names["serial"]])
    results = {name: common.summary(size, seconds) for name, seconds in times.items()}
    for name in results:
        results[name]["speedup_vs_serial"] = round(serial / common.median(times[name]), 3)
    fastest = min(times, key=lambda n: common.median(times[n]))
    return {
        "size": size,
        "threads": threads,
        "repeat": repeat,
        "map_chunk": _chunks(size)[0][1],
        "memory": "warm (host memory filled and freed before each run)",
        "variants": results,
        "split_median": {key: round(common.median([p[key] for p in split_parts]), 6) for key in ("prefault", "map")},
        "fastest": fastest,
        "per_map": {**overhead, "real_userspace_us": _real_userspace_overhead(repeat),
                    "real_kernel": _real_kernel_overhead(repeat)},
    }


def render(result: dict[str, Any]) -> str:
    rows = [[name, f"{v['median_seconds']:.3f}", f"{v['gib_per_s']:.2f}", f"{v['speedup_vs_serial']:.2f}x"]
            for name, v in result["variants"].items()]
    table = common.render_table(["variant", "median s", "GiB/s", "vs 1 thread"], rows)
    per_map = result["per_map"]
    real = per_map["real_kernel"]
    real_line = (f"real layer: {real['real_map_us']} us per map+unmap" if real.get("measured")
                 else f"real layer (kernel side): {real['why']}")
    split = result["split_median"]
    return "\n".join([
        f"vfio: {format_size(result['size'])} memfd, mock container, maps of {format_size(result['map_chunk'])}, "
        f"{result['repeat']} interleaved runs, {result['memory']}",
        table,
        f"fastest: {result['fastest']}; prefault-then-map split: prefault {split['prefault']:.3f} s, "
        f"map {split['map']:.3f} s",
        f"per map+unmap of a 4 KiB page: mock {per_map['mock_map_us']} us vs bare mlock+munlock "
        f"{per_map['bare_mlock_us']} us (mock layer overhead {per_map['mock_overhead_us']} us)",
        f"real layer (userspace part: struct + ioctl entry): {per_map['real_userspace_us']} us per map",
        real_line,
    ])

"""Do DMA maps of disjoint ranges from two threads run in parallel in the kernel?  Measured in the
nested guest, for iommufd (IOAS maps) and type1 (one container lock), as a ratio.

    python tests/nested/measure_parallel.py          # on the host: boots the iommufd guest

Inside the guest it maps a prefaulted region through one container with 1 and with 2 threads
(each thread maps its half, chunk by chunk), variants interleaved, and prints the medians and
the ratio time(1 thread) / time(2 threads): 2.0 is perfect scaling, 1.0 none.  TCG makes the
times meaningless; the ratio is what is reported (docs/devices.md).
"""

from __future__ import annotations

import json
import mmap
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1 << 20
SIZE = 512 * MiB
CHUNK = 32 * MiB
ROUNDS = 7
BASE = 1 << 32
EDU = "0000:00:10.0"


def map_with(kind: str, group: int, addr: int, threads: int) -> float:
    from vfiotask.devices.real import open_real_container

    with open_real_container([group], prefer=kind) as box:
        share = SIZE // threads

        def worker(index: int) -> None:
            for offset in range(index * share, (index + 1) * share, CHUNK):
                box.map_dma(addr + offset, BASE + offset, CHUNK)

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        started = time.perf_counter()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.perf_counter() - started
        assert box.unmap_dma(BASE, SIZE) == SIZE
    return elapsed


def inside() -> dict[str, object]:
    import ctypes

    subprocess.run([sys.executable, "-m", "vfiotask.integrations.cli.main", "bind", EDU], check=True)
    group = int(Path(f"/sys/bus/pci/devices/{EDU}/iommu_group").resolve().name)
    kinds = ["iommufd", "type1"] if Path("/dev/iommu").exists() else ["type1"]
    result: dict[str, object] = {"size_mib": SIZE // MiB, "chunk_mib": CHUNK // MiB, "rounds": ROUNDS}
    # Transparent huge pages (what an anonymous guest RAM usually gets) and 4 KiB pages.
    for pages, advice in (("thp", mmap.MADV_HUGEPAGE), ("4k", mmap.MADV_NOHUGEPAGE)):
        region = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(advice)
        region.write(b"\1" * SIZE)  # populate, after the advice
        addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
        times: dict[str, list[float]] = {f"{k}-{t}": [] for k in kinds for t in (1, 2)}
        for _round in range(ROUNDS):
            for kind in kinds:
                for threads in (1, 2):
                    times[f"{kind}-{threads}"].append(map_with(kind, group, addr, threads))
        medians = {key: statistics.median(values) for key, values in times.items()}
        result[pages] = {
            "medians_s": {k: round(v, 4) for k, v in medians.items()},
            "ratio_1_over_2": {k: round(medians[f"{k}-1"] / medians[f"{k}-2"], 3) for k in kinds},
        }
    return result


def main() -> int:
    if "--inside" in sys.argv:
        result = inside()
        Path("/tmp/results/parallel.json").write_text(json.dumps(result))
        print(json.dumps(result))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.nested.boot import run_script
    from tests.nested.kernels import IOMMUFD

    # The guest's initramfs and console stay only as long as the run: the result is printed.
    with tempfile.TemporaryDirectory(prefix="vfiotask-parallel-") as work:
        run = run_script(IOMMUFD, Path(work), ".venv/bin/python tests/nested/measure_parallel.py --inside",
                         timeout=900)
        found = run.results / "parallel.json"
        if not found.is_file():
            print(run.tail(), file=sys.stderr)
            return 1
        print(found.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

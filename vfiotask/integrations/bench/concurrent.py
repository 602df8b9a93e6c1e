"""`vfiotask bench concurrent`: N guests prepared together against one after another.

At host boot or autostart libvirtd runs the hook for many guests at once.  Each prepare wants
every CPU for its populate; the host-wide helper slots keep the helpers of all of them within
the cap, so starting N guests together should take no longer than starting them in turn.  This
suite runs the hook exactly as libvirtd does (a separate process, argv `NAME start begin -`,
the domain XML on stdin, an environment of LC_ALL, PATH and HOME) for N file-backed guests on a
private memory_backing_dir on /dev/shm with a private state dir, and times:
  together - N hooks started at once, until the last one exits;
  serial   - the same N hooks one after another, in total.
`release end` for every guest follows each run, untimed.  The variants are interleaved, each
run after warming host memory for all N guests.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vfiotask.errors import ResourceError
from vfiotask.integrations.bench.common import BenchOptions
from vfiotask.integrations.bench.hookrun import HookRunner
from vfiotask.integrations.bench.libvirt_start import guest_xml
from vfiotask.units import MiB, format_size

GUESTS = 4
DEFAULT_SIZE = 512 * MiB
HOOK_CODE = "import sys\nfrom vfiotask.integrations.libvirt.hook import main\nsys.exit(main(sys.argv))\n"


def _size(options: BenchOptions) -> int:
    from vfiotask.host.meminfo import mem_available

    size = DEFAULT_SIZE if options.size is None else options.size
    available = mem_available()
    if GUESTS * size * 2 > available:  # the guests' files, and as much again warmed before each run
        raise ResourceError(f"{GUESTS} guests of {format_size(size)} do not fit twice in the "
                            f"{format_size(available)} this host has available", hint="give a smaller --size")
    return size


def measure(size: int, repeat: int) -> dict[str, Any]:
    from vfiotask.integrations.bench.common import Variant, interleave, summary, warm_host_memory

    workdir = Path(tempfile.mkdtemp(prefix="vfiotask-bench-concurrent-"))
    backing = Path(tempfile.mkdtemp(prefix="vfiotask-bench-concurrent-", dir="/dev/shm"))
    hook = HookRunner([sys.executable, "-c", HOOK_CODE], workdir, backing, hint="run the suite with a smaller --size")
    guests = [(f"bench{index}", guest_xml(f"bench{index}", size, ours=True, immediate=False, guest_id=100 + index))
              for index in range(GUESTS)]

    def together() -> float:
        began = time.monotonic()
        hook.wait([hook.start(name, "start", "begin", xml) for name, xml in guests])
        return time.monotonic() - began

    def serial() -> float:
        began = time.monotonic()
        for name, xml in guests:
            hook.wait([hook.start(name, "start", "begin", xml)])
        return time.monotonic() - began

    def release() -> None:
        hook.wait([hook.start(name, "release", "end", xml) for name, xml in guests])

    variants = [Variant("together", run=together, cleanup=release), Variant("serial", run=serial, cleanup=release)]
    try:
        try:
            times = interleave(variants, repeat, lambda: warm_host_memory(GUESTS * size))
        finally:
            release()
    finally:
        shutil.rmtree(backing, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    total = GUESTS * size
    return {name: summary(total, values) for name, values in times.items()}


def run(options: BenchOptions) -> dict[str, Any]:
    size = _size(options)
    repeat = options.repeat
    variants = measure(size, repeat)
    together, serial = variants["together"]["median_seconds"], variants["serial"]["median_seconds"]
    return {
        "suite": "concurrent",
        "guests": GUESTS,
        "size": size,
        "repeat": repeat,
        "cpus": len(os.sched_getaffinity(0)),
        "load_before": round(os.getloadavg()[0], 2),
        "variants": variants,
        "serial_over_together": round(serial / together, 3) if together else None,
    }


def render(result: dict[str, Any]) -> str:
    def row(name: str) -> str:
        data = result["variants"][name]
        return f"  {name:<9} {data['median_seconds']:>9.3f}  " + " ".join(f"{s:.3f}" for s in data["seconds"])

    return "\n".join([
        f"start begin of {result['guests']} file-backed guests of {format_size(result['size'])} each, "
        f"{result['repeat']} interleaved runs, warm host memory, {result['cpus']} CPUs "
        f"(load {result['load_before']} before)",
        f"  {'variant':<9} {'median s':>9}  runs",
        row("together"),
        row("serial"),
        f"  one after another / together: {result['serial_over_together']:.2f}x",
    ])

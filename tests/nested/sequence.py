"""One sequence of DMA maps and unmaps, run against the mock (on any host) and a real container
(in the nested guest), with the outcome, errno and locked memory expected after every step.

Both sides assert the same literal `EXPECTED`, so the mock is held to what the kernel does.  The
sequence runs in a child without CAP_IPC_LOCK and with RLIMIT_MEMLOCK at `MEMLOCK`, so the
kernel's own limit check answers, and with a DMA entry limit of `ENTRY_LIMIT`.

    python -m tests.nested.sequence mock|type1|iommufd GROUP [SYSFS_ROOT]

prints one JSON list: per step [name, outcome, locked bytes of this process (VmLck + VmPin)].
"""

from __future__ import annotations

import json
import mmap
import sys
from collections.abc import Callable
from pathlib import Path

from vfiotask.devices.container import DmaContainer
from vfiotask.errors import VfiotaskError
from vfiotask.host.procfs import locked_memory

MiB = 1 << 20
BASE = 1 << 32
MEMLOCK = 6 * MiB  # under the 8 MiB hard limit a host without CAP_SYS_RESOURCE keeps
ENTRY_LIMIT = 4
REGION = 16 * MiB

Step = tuple[str, Callable[[DmaContainer, int, int], object]]


def _map(offset: int, iova: int, size: int) -> Callable[[DmaContainer, int, int], object]:
    return lambda box, region, hole: box.map_dma(region + offset, iova, size)


STEPS: list[Step] = [
    ("map 1M", _map(0, BASE, MiB)),
    ("map the next 1M", _map(MiB, BASE + MiB, MiB)),
    ("map over an IOVA in use", _map(0, BASE + MiB // 2, MiB)),
    ("map a misaligned address", _map(512, BASE + 32 * MiB, 4096)),
    ("map size zero", _map(0, BASE + 32 * MiB, 0)),
    ("map inside the MSI window", _map(0, 0xFEE00000, MiB)),
    ("map the first 1M again elsewhere", _map(0, BASE + 64 * MiB, MiB)),
    ("map past RLIMIT_MEMLOCK", _map(4 * MiB, BASE + 128 * MiB, 4 * MiB)),
    ("map an unmapped address", lambda box, region, hole: box.map_dma(hole, BASE + 256 * MiB, 2 * MiB)),
    ("map the 4th entry", _map(4 * MiB, BASE + 128 * MiB, MiB)),
    ("map a 5th entry", _map(5 * MiB, BASE + 129 * MiB, MiB)),
    ("unmap half of a mapping", lambda box, region, hole: box.unmap_dma(BASE + MiB // 2, MiB)),
    ("unmap two mappings at once", lambda box, region, hole: box.unmap_dma(BASE, 2 * MiB)),
    ("unmap where nothing is", lambda box, region, hole: box.unmap_dma(BASE + 512 * MiB, 4 * MiB)),
    ("map the 5th entry once there is room", _map(5 * MiB, BASE + 129 * MiB, MiB)),
    ("close", lambda box, region, hole: box.close()),
]

# (outcome, locked bytes after the step).  A page mapped twice is charged twice, as type1 does.
EXPECTED: list[tuple[str, int]] = [
    ("ok", MiB),
    ("ok", 2 * MiB),
    ("EEXIST", 2 * MiB),
    ("EINVAL", 2 * MiB),
    ("EINVAL", 2 * MiB),
    ("EINVAL", 2 * MiB),
    ("ok", 3 * MiB),
    ("ENOMEM", 3 * MiB),
    ("EFAULT", 3 * MiB),
    ("ok", 4 * MiB),
    ("ENOSPC", 4 * MiB),
    ("EINVAL", 4 * MiB),
    (f"ok {2 * MiB}", 2 * MiB),
    ("ok 0", 2 * MiB),
    ("ok", 3 * MiB),
    ("ok", 0),
]


# Where iommufd answers otherwise (steps by index): it has no DMA entry limit, so the 5th entry
# maps at once, stays charged, and is in the way when mapped again.
IOMMUFD_DIFFERENCES: dict[int, tuple[str, int]] = {
    10: ("ok", 5 * MiB),
    11: ("EINVAL", 5 * MiB),
    12: (f"ok {2 * MiB}", 3 * MiB),
    13: ("ok 0", 3 * MiB),
    14: ("EEXIST", 3 * MiB),
}


def expected_for(kind: str) -> list[tuple[str, int]]:
    """What `kind` ("mock", "type1", "iommufd", "iommufd-group") answers at each step."""
    if not kind.startswith("iommufd"):
        return list(EXPECTED)
    return [IOMMUFD_DIFFERENCES.get(index, step) for index, step in enumerate(EXPECTED)]


def outcome(call: Callable[[], object]) -> str:
    import errno as errno_module

    try:
        value = call()
    except VfiotaskError as exc:
        code = getattr(exc, "errno", None)
        return errno_module.errorcode.get(code, str(code)) if isinstance(code, int) else type(exc).__name__
    return "ok" if value is None else f"ok {value}"


def run(box: DmaContainer) -> list[tuple[str, str, int]]:
    region = mmap.mmap(-1, REGION, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))
    hole_map = mmap.mmap(-1, 2 * MiB)
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    hole = ctypes.addressof(ctypes.c_char.from_buffer(hole_map))
    hole_map.close()  # the address now names nothing: type1's EFAULT
    start = locked_memory().total
    results = []
    for name, step in STEPS:
        result = outcome(lambda step=step: step(box, base, hole))  # type: ignore[misc]
        results.append((name, result, locked_memory().total - start))
    return results


def open_for(kind: str, group: int, sysfs_root: Path | None) -> DmaContainer:
    if kind == "mock":
        from vfiotask.devices.mock import MockContainer

        return MockContainer([group], sysfs_root=sysfs_root, dma_entry_limit=ENTRY_LIMIT)
    from vfiotask.devices.real import open_real_container

    return open_real_container([group], prefer=kind)


def main(argv: list[str]) -> int:
    kind, group = argv[0], int(argv[1])
    sysfs_root = Path(argv[2]) if len(argv) > 2 else None
    print(json.dumps(run(open_for(kind, group, sysfs_root))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The kernel's CPU and node list format (`0-3,8,10-11`), as sysfs, procfs and cpusets write it."""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpu_list(text: str) -> frozenset[int]:
    """Parse the kernel's list format (`0-3,8,10-11`) used by cpulist, online and cpusets."""
    cpus: set[int] = set()
    for item in text.strip().split(","):
        item = item.strip()
        if not item:
            continue
        first, dash, last = item.partition("-")
        if dash:
            low, _, stride = last.partition(":")
            cpus.update(range(int(first), int(low) + 1, int(stride) if stride else 1))
        else:
            cpus.add(int(first))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The inverse of `parse_cpu_list`, for messages and reports."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    index = 0
    while index < len(ordered):
        first = last = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == last + 1:
            index += 1
            last = ordered[index]
        ranges.append(str(first) if first == last else f"{first}-{last}")
        index += 1
    return ",".join(ranges)

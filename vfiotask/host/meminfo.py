"""/proc/meminfo as bytes: how much memory the host can still give."""

from __future__ import annotations

from pathlib import Path


def meminfo(root: Path = Path("/")) -> dict[str, int]:
    """Every field of /proc/meminfo; `kB` values in bytes, counts (HugePages_*) as they are."""
    values: dict[str, int] = {}
    for line in (root / "proc/meminfo").read_text().splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        number = int(parts[0])
        values[name.strip()] = number * 1024 if len(parts) > 1 and parts[1] == "kB" else number
    return values


def mem_available(root: Path = Path("/")) -> int:
    """MemAvailable in bytes: the kernel's estimate of what can be allocated without swapping."""
    info = meminfo(root)
    return info.get("MemAvailable", info.get("MemFree", 0))

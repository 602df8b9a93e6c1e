"""/proc/meminfo as bytes: how much memory the host can still give."""

from __future__ import annotations

from pathlib import Path


def parse_meminfo(text: str) -> dict[str, int]:
    """`Name: N kB` lines (or a node's `Node N Name: N kB`); `kB` values in bytes, counts
    (HugePages_*) as they are.  A line without a number is skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        words, parts = name.split(), rest.split()
        if not sep or not words or not parts or not parts[0].isascii() or not parts[0].isdigit():
            continue
        number = int(parts[0])
        values[words[-1]] = number * 1024 if len(parts) > 1 and parts[1] == "kB" else number
    return values


def meminfo(root: Path = Path("/")) -> dict[str, int]:
    """Every field of /proc/meminfo (see `parse_meminfo`)."""
    return parse_meminfo((root / "proc/meminfo").read_text())


def mem_available(root: Path = Path("/")) -> int:
    """MemAvailable in bytes: the kernel's estimate of what can be allocated without swapping."""
    info = meminfo(root)
    return info.get("MemAvailable", info.get("MemFree", 0))

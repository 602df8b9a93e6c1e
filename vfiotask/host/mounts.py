"""Which filesystem a path lives on, from /proc/self/mountinfo.

Guest RAM in a file is only fast on tmpfs or hugetlbfs; anywhere else every page is written back
to disk.  The mount table (not statfs magic numbers alone) also gives the hugetlbfs page size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

MOUNTINFO = "proc/self/mountinfo"
RAM_FILESYSTEMS = frozenset({"tmpfs", "hugetlbfs"})
VIRTUAL_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "configfs", "devpts", "bpf",
    "pstore", "efivarfs", "mqueue", "fusectl", "binfmt_misc",
})
"""Filesystems that are views of the kernel: a guest RAM file cannot live there, --force or not."""


class Mount(NamedTuple):
    mountpoint: Path
    fstype: str
    source: str
    options: dict[str, str] = {}  # noqa: RUF012 - never changed


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(text):
        code = text[i + 1 : i + 4]
        if text[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _options(*texts: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for text in texts:
        for item in text.split(","):
            if item:
                key, _, value = item.partition("=")
                options[key] = value
    return options


def mounts(root: Path = Path("/")) -> list[Mount]:
    """Every mount in mount order (later mounts hide earlier ones at the same point)."""
    found: list[Mount] = []
    for line in (root / MOUNTINFO).read_text().splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        left = before.split()
        right = after.split()
        if len(left) < 6 or len(right) < 2:
            continue
        found.append(
            Mount(
                mountpoint=Path(_unescape(left[4])),
                fstype=right[0],
                source=_unescape(right[1]),
                options=_options(left[5], right[2] if len(right) > 2 else ""),
            )
        )
    return found


def mount_of(path: Path, root: Path = Path("/")) -> Mount:
    """The mount that holds `path` (resolved through symlinks of its directories)."""
    target = Path(os.path.realpath(path))
    best: Mount | None = None
    for mount in mounts(root):
        point = mount.mountpoint
        if (target == point or point in target.parents) and (
            best is None or len(point.parts) >= len(best.mountpoint.parts)
        ):
            best = mount
    if best is None:
        raise FileNotFoundError(f"no mount holds {path}")
    return best


def filesystem_type(path: Path, root: Path = Path("/")) -> str:
    return mount_of(path, root).fstype


def is_ram_filesystem(path: Path, root: Path = Path("/")) -> bool:
    return filesystem_type(path, root) in RAM_FILESYSTEMS

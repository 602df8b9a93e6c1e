"""Who holds hugepages: files on hugetlbfs mounts and processes that map hugetlb memory.

Shrinking a pool frees only its free pages; a page a file keeps or a process maps stays (the
kernel turns it into a surplus page) until the file is removed or the process lets go.  These
readers name them, so that a release can say what still holds the rest.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vfiotask.host.mounts import mounts
from vfiotask.host.procfs import command, pid_dirs


@dataclass(frozen=True)
class HugepageHolder:
    """A file that keeps hugepages, or a process that maps them."""

    what: str  # "file" or "process"
    name: str  # the file's path, or "comm (pid N)"
    bytes: int  # bytes of hugepages the file keeps (0 for a process: its maps do not say)
    page_size: int | None

    def describe(self) -> str:
        from vfiotask.units import format_size

        if self.what == "file":
            return f"file {self.name} ({format_size(self.bytes)})"
        return f"process {self.name}"


def _page_size(option: str | None, default: int | None) -> int | None:
    if not option:
        return default
    from vfiotask.units import parse_size

    return parse_size(option, what="pagesize")


def hugetlbfs_files(root: Path = Path("/"), default_page_size: int | None = None) -> list[HugepageHolder]:
    """Regular files with pages on every hugetlbfs mount, walked without following links."""
    found: list[HugepageHolder] = []
    seen: set[Path] = set()
    for mount in mounts(root):
        if mount.fstype != "hugetlbfs" or mount.mountpoint in seen:
            continue
        seen.add(mount.mountpoint)
        size = _page_size(mount.options.get("pagesize"), default_page_size)
        top = root / str(mount.mountpoint).lstrip("/")
        for directory, _dirs, files in os.walk(top, followlinks=False):
            for name in files:
                path = Path(directory) / name
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_blocks:
                    shown = "/" + str(path.relative_to(root)) if root != Path("/") else str(path)
                    found.append(HugepageHolder("file", shown, info.st_blocks * 512, size))
    return found


def hugetlb_mappers(root: Path = Path("/")) -> list[HugepageHolder]:
    """Processes with a hugetlb mapping (numa_maps marks them `huge`): memfds and anonymous
    hugepages show up here even with no file on any mount."""
    found: list[HugepageHolder] = []
    for pid_dir in pid_dirs(root / "proc"):
        try:
            maps = (pid_dir / "numa_maps").read_text()
        except OSError:  # gone, or another user's process for a normal user
            continue
        comm = command(pid_dir)
        if comm is not None and any(" huge " in f" {line} " for line in maps.splitlines()):
            found.append(HugepageHolder("process", f"{comm} (pid {pid_dir.name})", 0, None))
    return found


def hugepage_holders(root: Path = Path("/"), default_page_size: int | None = None) -> list[HugepageHolder]:
    return hugetlbfs_files(root, default_page_size) + hugetlb_mappers(root)

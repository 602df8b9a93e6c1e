"""Creating and populating a guest's RAM files, and the records that let another process undo it.

The same code serves the hook at `prepare begin` (files in the guest's own directory) and
`prepin --domain` ahead of a start (files in the staging directory, renamed into place later).
Every record carries the file's device and inode, so an undo never removes a file that someone
else has since put at that path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from vfiotask.errors import HostStateError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vfiotask.engine import Engine, ProgressFn
    from vfiotask.integrations.libvirt.paths import RamFile


class FileRecord(NamedTuple):
    """A RAM file vfiotask made: where, how big, which node, and its identity."""

    path: str
    size: int
    node: int | None
    dev: int
    inode: int
    allocated: int
    seconds: float = 0.0
    threads: int = 0
    staged_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        fields = {name: data.get(name) for name in cls._fields}
        return cls(**fields)  # type: ignore[arg-type]

    def still_ours(self) -> bool:
        """The path still names the file this record describes (same device and inode, not a link)."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (self.dev, self.inode)

    def remove(self) -> bool:
        """Unlink the file if it is still ours; True when something was removed."""
        if not self.still_ours():
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            return True
        return False


def populate_file(path: Path, size: int, node: int | None, *, threads: int = 0,
                  engine: Engine | None = None, progress: ProgressFn | None = None) -> FileRecord:
    """Create `path` at `size` and populate every page in parallel on `node`; nothing left on failure."""
    from vfiotask.jobs.prefault import prefault
    from vfiotask.memory.region import RegionSpec, open_region

    if os.path.lexists(path):
        raise HostStateError(
            f"guest RAM file {path} already exists (left by an earlier run?)",
            hint="make sure no guest uses it, remove it, then start the guest again",
        )
    region = open_region(RegionSpec(size=size, backing=str(path), node=node, create=True))
    try:
        report = prefault(region, engine=engine, max_threads=threads, progress=progress)
        info = os.fstat(region.fd) if region.fd is not None else os.lstat(path)
    except BaseException:
        region.close(remove_created=True)
        raise
    region.close(remove_created=False)
    return FileRecord(
        path=str(path),
        size=size,
        node=node,
        dev=info.st_dev,
        inode=info.st_ino,
        allocated=info.st_blocks * 512,
        seconds=report.seconds,
        threads=report.threads,
    )


def chown_nofollow(record: FileRecord, uid: int, gid: int) -> None:
    """Give the file to QEMU's user without ever following a link put in its place."""
    fd = os.open(record.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (record.dev, record.inode):
            raise HostStateError(
                f"guest RAM file {record.path} was replaced since it was populated",
                hint="check what else writes to memory_backing_dir, then start the guest again",
            )
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def allocated_bytes(path: str) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def hugetlbfs_pages(directory: Path, rams: Iterable[RamFile]) -> tuple[int, dict[int | None, int]]:
    """(page size, pages per host node) the files need in `directory`, a hugetlbfs mount.

    Files on hugetlbfs can only be populated from pages the pool has, so the hook and
    `prepin --domain` reserve them first: a start then fails at once with a clear message when
    the pool cannot grow, instead of QEMU failing to map its RAM (or being killed later).
    """
    page_size = os.statvfs(directory).f_bsize
    pages: dict[int | None, int] = {}
    for ram in rams:
        pages[ram.node] = pages.get(ram.node, 0) + -(-ram.size // page_size)
    return page_size, pages


def reserve_pages(owner: str, page_size: int, pages: dict[int | None, int],
                  reserver: Callable[[], Any]) -> tuple[dict[str, Any], bool]:
    """Hold `pages` for `owner` (already held: nothing to do); returns the record and whether it is new."""
    from vfiotask.integrations.libvirt.guestjournal import hugepages_held

    if hugepages_held(owner, page_size, pages):
        nodes = {"any" if node is None else str(node): count for node, count in pages.items()}
        return {"owner": owner, "page_size": page_size, "pages": nodes, "bytes": page_size * sum(pages.values()),
                "already_held": True}, False
    demands = {node: count * page_size for node, count in pages.items()}
    held = reserver().reserve(owner, demands, page_size, use_free=True)  # the file takes them at once
    return held.to_json(), not held.already_held


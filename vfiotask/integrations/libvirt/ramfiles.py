"""Creating and populating a guest's RAM files, journaled by inode so another process can undo them.

The same code serves the hook at `prepare begin` (files in the guest's own directory) and
`prepin --domain` ahead of a start (files in the staging directory, renamed into place later).
Everything below memory_backing_dir is reached by descriptor, one level at a time, never through
a link (the QEMU user owns a running guest's directory); each directory and file made is recorded
before it is made, with the device and inode it got, so an undo never removes something that
someone else has since put at that name.  Directories shared by every guest (`libvirt/`,
`libvirt/qemu/`, the staging directory) are recorded for the hook as a whole and removed by
whichever release finds them empty.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfiotask.dirfd import Dir, identity_of, open_path, open_root, walk
from vfiotask.errors import HostStateError
from vfiotask.journal import Journal, journaled_mkdir, make_file, open_recorded_dir, undo_entry, undo_fs
from vfiotask.journalrecords import (
    SHARED_OWNER,
    Entry,
    FileRecord,
    FsChange,
    LibvirtContents,
    Owner,
    Place,
    Reservation,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vfiotask.engine import Engine, ProgressFn
    from vfiotask.integrations.libvirt.paths import RamFile


def still_ours(record: FileRecord) -> bool:
    """The name still has the file `record` describes (same device and inode, not a link)."""
    try:
        with open_path(record.place.root, record.place.parts) as directory:
            info = directory.lstat(record.name)
    except (OSError, HostStateError):
        return False
    return info is not None and stat.S_ISREG(info.st_mode) and identity_of(info) == (record.dev, record.inode)


def open_place(place: Place, journal: Journal[LibvirtContents], owner: Owner) -> Dir:
    """`place`, opened level by level; missing levels are made and journaled first: the last for
    `owner`, those above it as shared.  Under the journal's lock, so that a release removing an empty
    shared directory never removes one a prepare is about to make its directory in."""
    with open_root(place.root) as root, journal.locked() as contents:
        parent = walk(root, place.parts[:-1], create=True, mode=0o755,
                      maker=journaled_mkdir(journal, contents, SHARED_OWNER, place.root))
        with parent:
            try:
                return parent.sub(place.parts[-1])
            except FileNotFoundError:
                return journaled_mkdir(journal, contents, owner, place.root)(parent, place.parts[-1], 0o700)


def populate_file(directory: Dir, place: Place, name: str, size: int, node: int | None, *,
                  journal: Journal[LibvirtContents], owner: Owner, threads: int = 0, engine: Engine | None = None,
                  progress: ProgressFn | None = None) -> FileRecord:
    """Create `name` in `directory` at `size`, journaled for `owner`, and populate every page in
    parallel on `node`; on failure nothing is left (file and entry both go)."""
    from vfiotask.jobs.prefault import prefault
    from vfiotask.memory.region import RegionSpec, open_region

    path = place.path / name
    try:
        fd, entry = make_file(journal, owner, directory, place, name, size)
    except FileExistsError as exc:
        raise HostStateError(
            f"guest RAM file {path} already exists (left by an earlier run?)",
            hint="make sure no guest uses it, remove it, then start the guest again",
        ) from exc
    try:
        region = open_region(RegionSpec(size=size, backing=str(path), node=node, fd=fd))
        try:
            report = prefault(region, engine=engine, max_threads=threads, progress=progress)
        finally:
            region.close(remove_created=False)
        info = os.fstat(fd)
    except BaseException:
        undo_entry(journal, entry)
        raise
    finally:
        os.close(fd)
    return FileRecord(path=str(path), size=size, node=node, dev=info.st_dev, inode=info.st_ino,
                      allocated=info.st_blocks * 512, seconds=report.seconds, threads=report.threads,
                      root=str(place.root), parts=tuple(place.parts))


def remove_empty_shared(journal: Journal[LibvirtContents], *, dry_run: bool = False) -> list[str]:
    """Remove the shared directories the hook made, deepest first, once nothing is left in them."""
    actions = []
    with journal.locked() as contents:
        for entry in journal.entries(contents, SHARED_OWNER):
            action = undo_fs(entry, dry_run=dry_run)
            if action:
                actions.append(action)
            if not dry_run and (action or not _present(entry)):
                journal.drop(contents, entry)
    return actions


def _present(entry: Entry) -> bool:
    """Whether the recorded directory still has its name (it stays recorded until it is removed)."""
    change = entry.change
    if not isinstance(change, FsChange):
        return False
    try:
        with open_recorded_dir(change) as directory:
            info = directory.lstat(change.name)
    except (OSError, HostStateError):
        return False
    return info is not None and (change.ident is None or identity_of(info) == change.ident)


def hand_over(place: Place, files: list[FileRecord], uid: int, gid: int, *, directory_too: bool) -> dict[str, int]:
    """Give the guest's directory (when the hook made it) and files to QEMU's uid:gid, by descriptor.

    A link or another file put at a name since it was populated is refused, never followed.
    Returns how many bytes each file holds now.
    """
    allocated: dict[str, int] = {}
    with open_path(place.root, place.parts) as directory:
        if directory_too:
            os.fchown(directory.fd, uid, gid)
        for record in files:
            fd = directory.open(record.name, os.O_RDONLY | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or identity_of(info) != (record.dev, record.inode):
                    raise HostStateError(
                        f"guest RAM file {record.path} was replaced since it was populated",
                        hint="check what else writes to memory_backing_dir, then start the guest again",
                    )
                os.fchown(fd, uid, gid)
                allocated[record.path] = info.st_blocks * 512
            finally:
                os.close(fd)
    return allocated


def allocated_bytes(record: FileRecord) -> int:
    with suppress(OSError, HostStateError), open_path(record.place.root, record.place.parts) as directory:
        info = directory.lstat(record.name)
        return info.st_blocks * 512 if info is not None else 0
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


def reserve_pages(owner: Owner, page_size: int, pages: dict[int | None, int],
                  reserver: Callable[[], Any]) -> tuple[Reservation, bool]:
    """Hold `pages` for `owner` (already held: nothing to do); returns the reservation and whether it is new."""
    from vfiotask.integrations.libvirt.guestjournal import hugepages_held

    if hugepages_held(owner, page_size, pages):
        return Reservation(owner, page_size, dict(pages), already_held=True), False
    demands = {node: count * page_size for node, count in pages.items()}
    held: Reservation = reserver().reserve(owner, demands, page_size, use_free=True)  # the file takes them at once
    return held, not held.already_held

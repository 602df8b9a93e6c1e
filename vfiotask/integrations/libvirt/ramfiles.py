"""Creating and populating a guest's RAM files, journaled by inode so another process can undo them.

The same code serves the hook at `start begin` and `prepin --domain` ahead of a start.  libvirt
gives memory_backing_dir/libvirt/qemu to the QEMU user, so nothing is made there: files are made
in vfiotask's private directory below memory_backing_dir (root's, 0700), the hook's in the
guest's directory there, the staging's in its own, and the finished guest directory is handed to
QEMU last, by one rename (`hand_over`).  Everything is reached by descriptor, one level at a
time, never through a link; each directory and file made is recorded before it is made, with the
device and inode it got, so an undo never removes something that someone else has since put at
that name.  Directories shared by every guest (`libvirt/`, `libvirt/qemu/`, the private
directory) are recorded for the hook as a whole and removed by whichever release finds them empty.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfiotask.dirfd import Dir, identity_of, open_path, walk
from vfiotask.errors import HostStateError
from vfiotask.journal import Journal, journaled_mkdir, make_file, open_recorded_dir, undo_entry, undo_fs
from vfiotask.journalrecords import (
    DIR,
    FILE,
    SHARED_OWNER,
    Entry,
    FileRecord,
    FsChange,
    Handover,
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


RAM_ROOT_HINT = ("point memory_backing_dir in qemu.conf at a directory only root can write, such as a hugetlbfs "
                 "or tmpfs mount (vfiotask setup memory-backing)")


def open_ram_root(place: Place) -> Dir:
    """memory_backing_dir, only when no one but root can change it or any directory above it."""
    from vfiotask.dirfd import open_trusted_root

    return open_trusted_root(place.root, hint=RAM_ROOT_HINT)


def open_place(place: Place, journal: Journal[LibvirtContents], owner: Owner, *, parent_mode: int = 0o755) -> Dir:
    """`place`, opened level by level; missing levels are made and journaled first: the last for
    `owner`, those above it as shared.  Under the journal's lock, so that a release removing an empty
    shared directory never removes one a prepare is about to make its directory in."""
    with open_ram_root(place) as root, journal.locked() as contents:
        parent = walk(root, place.parts[:-1], create=True, mode=parent_mode,
                      maker=journaled_mkdir(journal, contents, SHARED_OWNER, place.root))
        with parent:
            try:
                return parent.sub(place.parts[-1])
            except FileNotFoundError:
                return journaled_mkdir(journal, contents, owner, place.root)(parent, place.parts[-1], 0o700)


def open_private(place: Place, journal: Journal[LibvirtContents], owner: Owner) -> Dir:
    """A directory in vfiotask's private directory (made for `owner` when missing), checked to be
    root's alone at both levels: nothing in it can be reached, renamed or replaced by anyone else."""
    directory = open_place(place, journal, owner, parent_mode=0o700)
    try:
        with open_ram_root(place) as root, root.sub(place.parts[0]) as private:
            for level in (private, directory):
                info = os.fstat(level.fd)
                if info.st_uid != 0 or info.st_mode & 0o077:
                    raise HostStateError(
                        f"{level.path} is not vfiotask's private directory (owner uid {info.st_uid}, mode "
                        f"{stat.S_IMODE(info.st_mode):04o}; it must be root's, 0700)",
                        hint="remove it after checking who made it; vfiotask makes it itself",
                    )
    except BaseException:
        directory.close()
        raise
    return directory


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


def hand_over(journal: Journal[LibvirtContents], owner: Owner, preparing: Place, final: Place,
              files: list[FileRecord], label: tuple[int, int] | None) -> list[FileRecord]:
    """Give the finished guest directory to QEMU: chown it and its files to `label` (uid, gid)
    while they are still in root's private directory, then rename the directory to `final`.

    Everything is checked by descriptor before it is changed (each file's identity against its
    record), and the rename is rename(2)'s own: it replaces the empty directory libvirt makes for
    the guest between `prepare` and `start`, and fails, touching nothing, when something is in
    it.  The journal's entries move with the directory in the same write, so release and
    recovery find the files where QEMU uses them.  Returns the files' records at their new place.
    """
    with open_ram_root(preparing) as root, walk(root, preparing.parts) as directory:
        for record in files:
            fd = directory.open(record.name, os.O_RDONLY | os.O_NONBLOCK)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or identity_of(info) != (record.dev, record.inode):
                    raise HostStateError(
                        f"guest RAM file {record.path} was replaced since it was populated",
                        hint="check what else writes to memory_backing_dir, then start the guest again",
                    )
                if label is not None:
                    os.fchown(fd, *label)
            finally:
                os.close(fd)
        if label is not None:
            os.fchown(directory.fd, *label)
        moved = identity_of(os.fstat(directory.fd))
    with open_place(Place(final.root, final.parts[:-1]), journal, SHARED_OWNER) as guests, \
            open_ram_root(preparing) as root, walk(root, preparing.parts[:-1]) as private:
        _check_guests_dir(guests, private)
        change = Handover(str(final.root), tuple(final.parts[:-1]), guests.identity(), final.parts[-1], moved)
        with journal.locked() as contents:
            entry = journal.intend(contents, owner, change)
        try:
            private.move_dir(preparing.parts[-1], guests, final.parts[-1])
        except OSError as exc:
            with journal.locked() as contents:
                journal.drop(contents, entry)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                there = guests.lstat(final.parts[-1])
                what = ("is a symbolic link" if there is not None and stat.S_ISLNK(there.st_mode)
                        else "is not a directory" if there is not None and not stat.S_ISDIR(there.st_mode)
                        else "holds files vfiotask did not make")
                raise HostStateError(
                    f"guest directory {final.path} {what}; the guest's RAM was not handed to QEMU",
                    hint="remove it after checking who put it there, then start the guest again",
                ) from exc
            raise
        with journal.locked() as contents:
            relocate(journal, contents, owner, journal.done(contents, entry, save=False))
    return [r._replace(path=str(final.path / r.name), root=str(final.root), parts=tuple(final.parts)) for r in files]


def _check_guests_dir(guests: Dir, private: Dir) -> None:
    """The directory guests' directories are renamed into.  libvirt gives it to the QEMU user
    (qemu.conf's `user`, which need not be this guest's label), so its owner is libvirt's choice;
    but no one else may write it, and it must be on the private directory's filesystem."""
    from vfiotask.dirfd import unsafe_reason

    info = os.fstat(guests.fd)
    problem = unsafe_reason(info, owner=info.st_uid)
    if problem is None and info.st_dev != os.fstat(private.fd).st_dev:
        problem = "is on another filesystem than vfiotask's private directory"
    if problem:
        raise HostStateError(f"{guests.path} {problem}; the guest's RAM was not handed to QEMU",
                             hint="let libvirt make memory_backing_dir/libvirt/qemu itself (restart libvirtd)")


def relocate(journal: Journal[LibvirtContents], contents: LibvirtContents, owner: Owner, handover: Entry) -> None:
    """Point `owner`'s entries at the guest directory's new place (it kept its inode): the
    directory's own entry, and those of the files in it; then the hand-over's entry goes.  One
    save for all of it, so the journal never shows the directory in two places."""
    change = handover.change
    assert isinstance(change, Handover)
    inside = (*change.parts, change.name)
    for entry in journal.entries(contents, owner):
        made = entry.change
        if not isinstance(made, FsChange):
            continue
        if made.kind == DIR and made.ident == change.moved:
            moved = made._replace(root=change.root, parts=change.parts, dir=change.dir, name=change.name)
        elif made.kind == FILE and made.dir == change.moved:
            moved = made._replace(root=change.root, parts=inside)
        else:
            continue
        journal.done(contents, entry, moved, save=False)
    journal.drop(contents, handover)


def settle_handover(journal: Journal[LibvirtContents], owner: Owner) -> None:
    """A hand-over killed between its intent and its record: find the directory where it is now."""
    with journal.locked() as contents:
        for entry in journal.entries(contents, owner):
            change = entry.change
            if not isinstance(change, Handover):
                continue
            arrived = False
            with suppress(OSError, HostStateError), open_path(Path(change.root), change.parts) as guests:
                info = guests.lstat(change.name)
                arrived = guests.identity() == change.dir and info is not None and identity_of(info) == change.moved
            if arrived:
                relocate(journal, contents, owner, entry)
            else:
                journal.drop(contents, entry)


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

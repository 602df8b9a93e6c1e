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

import errno
import os
import stat
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from vfiotask.dirfd import Dir, identity_of, open_path, walk
from vfiotask.errors import HostStateError
from vfiotask.integrations.libvirt.paths import Place
from vfiotask.journal import Journal, fs_fields, journaled_mkdir, make_file, open_recorded_dir, undo_entry, undo_fs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vfiotask.engine import Engine, ProgressFn
    from vfiotask.integrations.libvirt.paths import RamFile

SHARED_OWNER = "libvirt"
HANDOVER_KIND = "handover"  # a guest directory renamed from the private directory to where QEMU opens it


STAGED_PREFIX = "libvirt-staged:"


def staged_owner(name: str) -> str:
    return f"{STAGED_PREFIX}{name}"


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
    root: str | None = None
    parts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileRecord:
        fields: dict[str, Any] = {name: data[name] for name in cls._fields if name in data}
        fields["parts"] = tuple(fields.get("parts") or ())
        return cls(**fields)

    @property
    def place(self) -> Place:
        return Place(Path(self.root or Path(self.path).parent), tuple(self.parts))

    @property
    def name(self) -> str:
        return Path(self.path).name

    def still_ours(self) -> bool:
        """The name still has the file this record describes (same device and inode, not a link)."""
        try:
            with open_path(self.place.root, self.place.parts) as directory:
                info = directory.lstat(self.name)
        except (OSError, HostStateError):
            return False
        return info is not None and stat.S_ISREG(info.st_mode) and identity_of(info) == (self.dev, self.inode)


RAM_ROOT_HINT = ("point memory_backing_dir in qemu.conf at a directory only root can write, such as a hugetlbfs "
                 "or tmpfs mount (vfiotask setup memory-backing)")


def open_ram_root(place: Place) -> Dir:
    """memory_backing_dir (or libvirt's default), only when no one but root can change it or any
    directory above it: libvirt's default lies under the QEMU user's /var/lib/libvirt/qemu."""
    from vfiotask.dirfd import open_trusted_root

    return open_trusted_root(place.root, hint=RAM_ROOT_HINT)


def open_place(place: Place, journal: Journal, owner: str, *, parent_mode: int = 0o755) -> Dir:
    """`place`, opened level by level; missing levels are made and journaled first: the last for
    `owner`, those above it as shared.  Under the journal's lock, so that a release removing an empty
    shared directory never removes one a prepare is about to make its directory in."""
    with open_ram_root(place) as root, journal.locked() as data:
        parent = walk(root, place.parts[:-1], create=True, mode=parent_mode,
                      maker=journaled_mkdir(journal, data, SHARED_OWNER, place.root))
        with parent:
            try:
                return parent.sub(place.parts[-1])
            except FileNotFoundError:
                return journaled_mkdir(journal, data, owner, place.root)(parent, place.parts[-1], 0o700)


def open_private(place: Place, journal: Journal, owner: str) -> Dir:
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


def populate_file(directory: Dir, place: Place, name: str, size: int, node: int | None, *, journal: Journal,
                  owner: str, threads: int = 0, engine: Engine | None = None,
                  progress: ProgressFn | None = None) -> FileRecord:
    """Create `name` in `directory` at `size`, journaled for `owner`, and populate every page in
    parallel on `node`; on failure nothing is left (file and entry both go)."""
    from vfiotask.jobs.prefault import prefault
    from vfiotask.memory.region import RegionSpec, open_region

    path = place.path / name
    try:
        fd, entry = make_file(journal, owner, directory, place.root, list(place.parts), name, size)
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


def remove_empty_shared(journal: Journal, *, dry_run: bool = False) -> list[str]:
    """Remove the shared directories the hook made, deepest first, once nothing is left in them."""
    actions = []
    with journal.locked() as data:
        for entry in journal.entries(data, SHARED_OWNER):
            action = undo_fs(entry, dry_run=dry_run)
            if action:
                actions.append(action)
            if not dry_run and (action or not _present(entry)):
                journal.drop(data, entry)
    return actions


def _present(entry: dict[str, Any]) -> bool:
    """Whether the recorded directory still has its name (it stays recorded until it is removed)."""
    try:
        with open_recorded_dir(entry) as directory:
            info = directory.lstat(str(entry["name"]))
    except (OSError, HostStateError):
        return False
    ident = entry.get("ident")
    return info is not None and (ident is None or list(identity_of(info)) == list(ident))


def hand_over(journal: Journal, owner: str, preparing: Place, final: Place, files: list[FileRecord],
              label: tuple[int, int] | None) -> list[FileRecord]:
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
        with journal.locked() as data:
            entry = journal.intend(data, owner, HANDOVER_KIND, moved=list(moved),
                                   **fs_fields(guests, final.root, list(final.parts[:-1]), final.parts[-1]))
        try:
            private.move_dir(preparing.parts[-1], guests, final.parts[-1])
        except OSError as exc:
            with journal.locked() as data:
                journal.drop(data, entry)
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
        with journal.locked() as data:
            journal.done(data, entry)
            relocate(journal, data, owner, entry)
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


def relocate(journal: Journal, data: dict[str, Any], owner: str, handover: dict[str, Any]) -> None:
    """Point `owner`'s entries at the guest directory's new place (it kept its inode): the
    directory's own entry, and those of the files in it."""
    moved = list(handover["moved"])
    new_parts = [*handover["parts"], handover["name"]]
    for entry in journal.entries(data, owner):
        if entry.get("kind") == "dir" and list(entry.get("ident") or []) == moved:
            journal.done(data, entry, root=handover["root"], parts=list(handover["parts"]),
                         name=handover["name"], dir=list(handover["dir"]))
        elif entry.get("kind") == "file" and list(entry.get("dir") or []) == moved:
            journal.done(data, entry, root=handover["root"], parts=new_parts)
    journal.drop(data, handover)


def settle_handover(journal: Journal, owner: str) -> None:
    """A hand-over killed between its intent and its record: find the directory where it is now."""
    with journal.locked() as data:
        for entry in journal.entries(data, owner):
            if entry.get("kind") != HANDOVER_KIND:
                continue
            arrived = False
            with suppress(OSError, HostStateError), open_recorded_dir(entry) as guests:
                info = guests.lstat(str(entry["name"]))
                arrived = (list(guests.identity()) == list(entry["dir"]) and info is not None
                           and list(identity_of(info)) == list(entry["moved"]))
            if arrived:
                relocate(journal, data, owner, entry)
            else:
                journal.drop(data, entry)


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

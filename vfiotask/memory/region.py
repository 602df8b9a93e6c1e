"""Guest RAM regions: anonymous memory, a memfd (optionally hugetlb), or a file on tmpfs/hugetlbfs.

Everything that can be wrong with a request is checked before anything is created, so that bad
input leaves nothing behind: the size against the page size and what the host can give, the
path (directory, symlink, filesystem, an existing file's size), the NUMA node.  File and memfd
regions are mapped shared, so that pages populated here are the pages QEMU maps later, and so
that helper processes can populate the same pages through their own mapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vfiotask.errors import HugepageShortageError, ResourceError, UsageError
from vfiotask.host import libc
from vfiotask.host.hugepages import HugepagePools
from vfiotask.host.meminfo import mem_available
from vfiotask.host.mounts import RAM_FILESYSTEMS, VIRTUAL_FILESYSTEMS, mount_of
from vfiotask.host.numa import online_nodes
from vfiotask.journalrecords import PREPIN_OWNER, Entry, FilesContents, Place
from vfiotask.units import format_size

BASE_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HOST_ROOT = Path("/")
DISK_COST = (
    "guest RAM in a file on {fstype} is written back to disk: every page is written out as it is "
    "prepared and the disk fills with guest memory"
)
MEMFD_NAME = "vfiotask-guest-ram"
MFD_HUGE_SHIFT = 26


@dataclass
class RegionSpec:
    """What region to open.

    `backing` is "anon", "memfd" or a file path.  `page_size` asks a memfd for hugetlb pages of
    that size; for a file it is detected from the filesystem (and, when given, must match).
    `force` allows a file on a filesystem that is not tmpfs or hugetlbfs; `create` allows
    creating a file that does not exist.  `fd` is a file the caller already made at `backing`
    (by descriptor, journaled): it is mapped as it is and never removed here.
    `transparent_hugepages` asks for THP (MADV_HUGEPAGE) on
    memory that is not hugetlb, as QEMU does for guest RAM: anonymous memory then faults 2 MiB at
    a time, and a file on a tmpfs mounted `huge=advise` or `huge=within_size` is filled with huge
    pages that every later mapper (QEMU, the VFIO pin) maps whole instead of 512 faults apiece.

    Example:
        >>> RegionSpec(size=4 << 30, backing="memfd", page_size=2 << 20, node=0)  # hugetlb memfd on node 0
    """

    size: int
    backing: str = "memfd"
    page_size: int | None = None
    node: int | None = None
    force: bool = False
    create: bool = True
    transparent_hugepages: bool = True
    host_root: Path = field(default=HOST_ROOT, repr=False)
    fd: int | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.backing if self.backing in ("anon", "memfd") else "file"


@dataclass
class Region:
    """A mapped guest RAM region.  Close it (or use it as a context manager) to unmap it.

    Example:
        >>> with open_region(RegionSpec(size=64 << 20, backing="memfd")) as region:
        ...     prefault(region)
    """

    addr: int
    size: int
    page_size: int
    kind: str
    path: Path | None = None
    fd: int | None = None
    created: bool = False
    record: Entry | None = field(default=None, repr=False)  # the journal entry of a created file
    hugetlb: bool = False
    node: int | None = None
    fstype: str | None = None
    transparent_hugepages: bool = False
    closed: bool = False

    @property
    def shared(self) -> bool:
        """True when another process can map the same pages (memfd or file)."""
        return self.fd is not None

    def map_again(self) -> int:
        """Map the same pages once more in this process (a helper process's own view)."""
        if self.fd is None:
            raise ValueError("an anonymous region cannot be mapped by another process")
        addr = libc.mmap(self.size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, self.fd)
        if self.transparent_hugepages:
            _advise_hugepages(addr, self.size)
        if self.node is not None:
            libc.mbind(addr, self.size, libc.MPOL_BIND, [self.node])
        return addr

    def allocated_bytes(self) -> int:
        """Bytes the backing really holds now (file and memfd), or resident bytes unknown: 0."""
        if self.fd is None:
            return 0
        return os.fstat(self.fd).st_blocks * 512

    def data_ranges(self) -> list[tuple[int, int]]:
        """The `[start, end)` ranges of the backing that hold data (SEEK_DATA / SEEK_HOLE).

        Filesystems without hole support report the whole file as data, which is the safe
        answer: nothing in it will be thrown away.  A file with no blocks has no data at all.
        """
        if self.fd is None:
            return []
        if os.fstat(self.fd).st_blocks == 0:
            return []
        ranges: list[tuple[int, int]] = []
        position = 0
        while position < self.size:
            try:
                start = os.lseek(self.fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
            if start >= self.size:
                break
            ranges.append((start, end))
            position = end
        return ranges

    def release_pages(self, offset: int, length: int) -> None:
        """Give the pages of `[offset, offset+length)` back: anonymous memory is dropped, a
        memfd or file gets a hole (its size stays).  Only for pages no one needs the data of."""
        if self.fd is None:
            libc.madvise(self.addr + offset, length, libc.MADV_DONTNEED)
        else:
            libc.punch_hole(self.fd, offset, length)

    def close(self, *, remove_created: bool = True) -> None:
        """Unmap, close the fd, and unlink a file this region created when `remove_created`."""
        if self.closed:
            return
        self.closed = True
        try:
            libc.munmap(self.addr, self.size)
        finally:
            if self.fd is not None:
                os.close(self.fd)
            if self.record is not None:
                _settle(self.record, remove=remove_created)
                self.record = None

    def __enter__(self) -> Region:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(remove_created=exc is not None)


@dataclass
class _Plan:
    """What open_region decided before touching anything."""

    kind: str
    page_size: int
    hugetlb: bool
    path: Path | None = None
    exists: bool = False
    allocated: int = 0
    fstype: str | None = None
    free_bytes: int | None = None  # room on a size-limited tmpfs/hugetlbfs mount
    fd: int | None = None  # an existing backing file, opened once while planning (see _open_existing)


def _check_size(size: int, page_size: int, what: str) -> None:
    if size % page_size:
        raise UsageError(
            f"size {format_size(size)} ({size} bytes) is not a multiple of the "
            f"{format_size(page_size)} pages of {what}",
            hint=f"round it to a multiple of {format_size(page_size)}",
        )


def _open_existing(path: Path) -> int | None:
    """The backing file opened once, or None when there is none (it is then created by descriptor).

    Everything later is decided on this descriptor, never on the path again: a check of the path
    followed by an open would map whatever another user swapped in between (a FIFO, whose mmap
    fails with ENODEV).  Not following a link and not blocking (a FIFO opens at once), then
    checked to be a regular file (what tmpfs and hugetlbfs hold)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"backing file {path} is a symbolic link; it is not followed",
                             hint="give the real path of the file") from exc
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory; a socket or a device without its driver
            raise UsageError(f"backing file {path} is not a regular file",
                             hint="give the path of a file, not a directory") from exc
        raise _path_error(path, exc) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"backing file {path} is not a regular file", hint="give the path of a file, not a directory")
    return fd


def _plan_file(spec: RegionSpec) -> _Plan:
    path = Path(spec.backing)
    parent = path.parent
    if spec.fd is not None:
        return _plan_fd(spec, path)
    if not parent.is_dir():
        raise UsageError(
            f"backing file {path}: directory {parent} does not exist",
            hint="create the directory (on tmpfs or hugetlbfs) or choose another path",
        )
    fd = _open_existing(path)
    try:
        return _plan_opened(spec, path, fd)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise


def _plan_opened(spec: RegionSpec, path: Path, fd: int | None) -> _Plan:
    parent = path.parent
    info = os.fstat(fd) if fd is not None else None
    if info is None and not spec.create:
        raise UsageError(f"backing file {path} does not exist", hint="create it or allow creation")
    mount = mount_of(parent, spec.host_root)
    if mount.fstype in VIRTUAL_FILESYSTEMS:
        raise UsageError(
            f"backing file {path} is on {mount.fstype} ({mount.mountpoint}), a kernel interface that cannot hold "
            "guest RAM",
            hint="put it on tmpfs (/dev/shm) or hugetlbfs",
        )
    if mount.fstype not in RAM_FILESYSTEMS and not spec.force:
        raise UsageError(
            f"backing file {path} is on {mount.fstype} ({mount.mountpoint}), not tmpfs or hugetlbfs: "
            + DISK_COST.format(fstype=mount.fstype),
            hint="put it on tmpfs (/dev/shm) or hugetlbfs, or pass --force to accept the cost",
        )
    hugetlb = mount.fstype == "hugetlbfs"
    fs = os.fstatvfs(fd) if fd is not None else os.statvfs(parent)
    page_size = fs.f_bsize if hugetlb else BASE_PAGE_SIZE
    if spec.page_size is not None and spec.page_size != page_size:
        raise UsageError(
            f"page size {format_size(spec.page_size)} asked, but {parent} has {format_size(page_size)} pages",
            hint="leave the page size out for files, or use a mount with that page size",
        )
    free_bytes = None
    if mount.fstype in RAM_FILESYSTEMS and fs.f_blocks:
        free_bytes = fs.f_bavail * fs.f_frsize
    if info is not None and info.st_size != spec.size:
        raise UsageError(
            f"backing file {path} exists with size {format_size(info.st_size)} ({info.st_size} bytes), "
            f"not the {format_size(spec.size)} ({spec.size} bytes) asked",
            hint="give its size with --size, or remove it or choose another path",
        )
    return _Plan(
        kind="file",
        page_size=page_size,
        hugetlb=hugetlb,
        path=path,
        exists=info is not None,
        allocated=(info.st_blocks * 512 if info is not None else 0),
        fstype=mount.fstype,
        free_bytes=free_bytes,
        fd=fd,
    )


def _plan_fd(spec: RegionSpec, path: Path) -> _Plan:
    """A file the caller made: its filesystem decides the page size; its size must be the region's."""
    assert spec.fd is not None
    info = os.fstat(spec.fd)
    mount = mount_of(path.parent, spec.host_root)
    hugetlb = mount.fstype == "hugetlbfs"
    fs = os.fstatvfs(spec.fd)
    if info.st_size != spec.size:
        raise UsageError(f"backing file {path} has {info.st_size} bytes, not {spec.size}", hint="this is a bug")
    free = fs.f_bavail * fs.f_frsize if mount.fstype in RAM_FILESYSTEMS and fs.f_blocks else None
    return _Plan(kind="file", page_size=fs.f_bsize if hugetlb else BASE_PAGE_SIZE, hugetlb=hugetlb, path=path,
                 exists=True, allocated=info.st_blocks * 512, fstype=mount.fstype, free_bytes=free)


def _plan(spec: RegionSpec) -> _Plan:
    if spec.kind == "file":
        return _plan_file(spec)
    if spec.page_size is None or spec.page_size == BASE_PAGE_SIZE:
        return _Plan(kind=spec.kind, page_size=BASE_PAGE_SIZE, hugetlb=False)
    sizes = HugepagePools(spec.host_root).page_sizes()
    if spec.page_size not in sizes:
        offered = ", ".join(format_size(s) for s in sizes) or "none"
        raise UsageError(
            f"hugepage size {format_size(spec.page_size)} is not offered by this host (offered: {offered})",
            hint="choose one of the offered sizes",
        )
    return _Plan(kind=spec.kind, page_size=spec.page_size, hugetlb=True)


def _check_node(spec: RegionSpec) -> None:
    if spec.node is None:
        return
    nodes = sorted(online_nodes(spec.host_root)) or [0]  # no NUMA sysfs: one node, 0
    if spec.node not in nodes:
        raise UsageError(
            f"NUMA node {spec.node} does not exist (online: {', '.join(map(str, nodes))})",
            hint="choose an online node or leave --node out",
        )


def _check_resources(spec: RegionSpec, plan: _Plan) -> None:
    needed = max(spec.size - plan.allocated, 0)
    if plan.hugetlb:
        pages = needed // plan.page_size
        pools = HugepagePools(spec.host_root)
        state = pools.state(plan.page_size)
        free = state.available
        where = ""
        if spec.node is not None:
            with contextlib.suppress(FileNotFoundError):
                free = min(free, pools.state(plan.page_size, spec.node).free)
                where = f" on node {spec.node}"
        if plan.free_bytes is not None:
            free = min(free, plan.free_bytes // plan.page_size)
        if pages > free:
            raise HugepageShortageError(
                f"{format_size(plan.page_size)} hugepage pool{where} too small: {pages} pages needed, "
                f"{free} free",
                hint=f"add at least {pages - free} pages (vfiotask hugepages, or "
                f"echo N > /sys/kernel/mm/hugepages/hugepages-{plan.page_size // 1024}kB/nr_hugepages) "
                "or ask for less memory",
            )
        return
    available = mem_available(spec.host_root)
    if needed > available:
        raise ResourceError(
            f"size {format_size(spec.size)} is more than the host can give ({format_size(available)} available)",
            hint="ask for less memory or free some on the host",
        )
    if plan.free_bytes is not None and needed > plan.free_bytes:
        raise ResourceError(
            f"{plan.fstype} mount of {plan.path} has {format_size(plan.free_bytes)} free, "
            f"{format_size(needed)} needed",
            hint="remount it larger (mount -o remount,size=...) or ask for less memory",
        )


def _open_fd(spec: RegionSpec, plan: _Plan) -> tuple[int | None, Entry | None]:
    """The fd to map (None for anonymous memory) and the journal entry of a file it created."""
    if plan.kind == "anon":
        return None, None
    if plan.kind == "memfd":
        flags = os.MFD_CLOEXEC
        if plan.hugetlb:
            flags |= os.MFD_HUGETLB | (plan.page_size.bit_length() - 1) << MFD_HUGE_SHIFT
        fd = os.memfd_create(MEMFD_NAME, flags)
        try:
            os.ftruncate(fd, spec.size)
        except BaseException:
            os.close(fd)
            raise
        return fd, None
    assert plan.path is not None
    if spec.fd is not None:
        return os.dup(spec.fd), None
    if plan.fd is not None:  # the existing file, as it was opened and checked: from here it is the caller's
        fd, plan.fd = plan.fd, None
        return fd, None
    return _create_file(plan.path, spec.size)


def _path_error(path: Path, exc: OSError) -> UsageError:
    """A backing path the system refuses (permission, name too long, read-only): one line, not a traceback."""
    return UsageError(f"backing file {path}: {exc.strerror or exc}",
                      hint="give a path on tmpfs or hugetlbfs that this user may read and write")


def _map(spec: RegionSpec, plan: _Plan, fd: int | None) -> int:
    prot = libc.PROT_READ | libc.PROT_WRITE
    try:
        if fd is None:
            flags = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS
            if plan.hugetlb:
                flags |= libc.MAP_HUGETLB | (plan.page_size.bit_length() - 1) << libc.MAP_HUGE_SHIFT
            return libc.mmap(spec.size, prot, flags)
        return libc.mmap(spec.size, prot, libc.MAP_SHARED, fd)
    except OSError as exc:
        if exc.errno == errno.ENOMEM and plan.hugetlb:
            raise HugepageShortageError(
                f"the {format_size(plan.page_size)} hugepage pool could not reserve "
                f"{spec.size // plan.page_size} pages",
                hint="add pages to the pool or ask for less memory",
            ) from exc
        if exc.errno == errno.ENOMEM:
            raise ResourceError(f"cannot map {format_size(spec.size)}: out of memory",
                                hint="ask for less memory") from exc
        raise


def open_region(spec: RegionSpec) -> Region:
    """Check `spec`, then create or open the backing and map it (shared for memfd and files).

    Raises UsageError for a request that cannot be meant and ResourceError (HugepageShortageError)
    when the host cannot give the memory; in both cases nothing is created.

    Example:
        >>> region = open_region(RegionSpec(size=1 << 30, backing="/dev/shm/guest.ram"))
        >>> region.page_size, region.kind
        (4096, 'file')
    """
    if spec.size <= 0:
        raise UsageError(f"size {spec.size} must be greater than zero", hint="give a positive size such as 1G")
    if spec.kind == "file" and spec.fd is None:
        recover_files(Path(spec.backing))  # a file a killed run left there is removed, never reused
    plan = _plan(spec)
    try:
        what = plan.fstype or ("hugetlb memfd" if plan.hugetlb else spec.kind)
        _check_size(spec.size, plan.page_size, what)
        _check_node(spec)
        _check_resources(spec, plan)
        fd, record = _open_fd(spec, plan)
    finally:
        if plan.fd is not None:  # refused before it was handed on
            os.close(plan.fd)
    created = record is not None
    try:
        addr = _map(spec, plan, fd)
    except BaseException:
        _discard(fd, record)
        raise
    region = Region(
        addr=addr,
        size=spec.size,
        page_size=plan.page_size,
        kind=plan.kind,
        path=plan.path,
        fd=fd,
        created=created,
        record=record,
        hugetlb=plan.hugetlb,
        node=spec.node,
        fstype=plan.fstype,
        transparent_hugepages=spec.transparent_hugepages and not plan.hugetlb,
    )
    try:
        if region.transparent_hugepages:
            _advise_hugepages(addr, spec.size)
        if spec.node is not None:
            libc.mbind(addr, spec.size, libc.MPOL_BIND, [spec.node])
    except BaseException:
        region.close(remove_created=True)
        raise
    return region


def _advise_hugepages(addr: int, size: int) -> None:
    """Ask for transparent hugepages; a kernel without THP (EINVAL) just keeps 4 KiB pages."""
    try:
        libc.madvise(addr, size, libc.MADV_HUGEPAGE)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _discard(fd: int | None, record: Entry | None) -> None:
    if fd is not None:
        os.close(fd)
    if record is not None:
        _settle(record, remove=True)


# -- backing files this process creates: journaled, so a killed run's file is found and removed --------

def _recorded_parent(path: Path) -> Path:
    """The directory a backing file is made in, as the journal records it: absolute and without
    links, `.` or `..` (a relative `--backing` names the directory it meant now, not where
    `vfiotask recover` later runs)."""
    return Path(os.path.realpath(path.parent))


def _create_file(path: Path, size: int) -> tuple[int, Entry]:
    """Create the backing file by descriptor in its directory, recorded by inode before it has its name."""
    from vfiotask.dirfd import open_root
    from vfiotask.journal import Journal, make_file

    try:
        parent = _recorded_parent(path)
        with open_root(parent) as directory:
            return make_file(Journal(FilesContents), PREPIN_OWNER, directory, Place(parent, ()), path.name, size)
    except FileExistsError as exc:
        raise UsageError(f"backing file {path} appeared while it was being created",
                         hint="check who else uses that path, then retry") from exc
    except OSError as exc:
        raise _path_error(path, exc) from exc


def _settle(record: Entry, *, remove: bool) -> None:
    """A created file is removed (the run failed) or handed to the user (the run succeeded)."""
    from vfiotask.journal import Journal, undo_entry

    journal = Journal(FilesContents)
    if remove:
        undo_entry(journal, record)
        return
    with journal.locked() as contents:
        journal.drop(contents, record)


def recover_files(path: Path | None = None, *, dry_run: bool = False) -> list[str]:
    """Remove backing files created by runs that were killed (those at `path`, or all); says what it did.

    A run about to use `path` calls this first, so a file left by a killed run is never taken
    for a file the user made.
    """
    from vfiotask.errors import StateDirError
    from vfiotask.journal import Journal, undo_recorded

    journal = Journal(FilesContents)
    try:
        if not journal.read().intents:
            return []
    except StateDirError:  # nothing can have been recorded where this user cannot write
        return []
    at = None if path is None else _recorded_parent(path) / path.name
    return undo_recorded(journal, PREPIN_OWNER, orphaned=True, dry_run=dry_run,
                         where=lambda change: at is None or change.path == at)

"""What the hook does for a guest that is ours, at `start begin`, the last phase before QEMU runs.

All of it happens in that one phase (libvirt gives it the whole definition and QEMU's DAC label):
check the PCI devices' IOMMU groups and the memlock budget QEMU will get, reserve hugepages on
the guest's nodes, make and populate file-backed RAM (or take over staged files) in root's
private directory, and hand the finished directory to QEMU last.  Each step registers its undo
first, so any failure gives back everything and libvirt aborts the start with our message.
release: give back what was recorded; idempotent, and it never fails the stop.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vfiotask.dirfd import Dir, identity_of, open_path
from vfiotask.errors import HostStateError, MemlockLimitError, VfiotaskError, describe_exception
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.guestjournal import GuestJournal
from vfiotask.integrations.libvirt.ramfiles import (
    hand_over,
    hugetlbfs_pages,
    open_private,
    open_ram_root,
    populate_file,
    remove_empty_shared,
    reserve_pages,
    settle_handover,
    still_ours,
)
from vfiotask.journal import Journal, fs_change, holder, holder_alive, undo_recorded
from vfiotask.journalrecords import (
    FILE,
    GUEST,
    GUEST_PAGES,
    STAGING,
    AtStart,
    FileRecord,
    FsChange,
    GuestRecord,
    LibvirtContents,
    Owner,
    Place,
    PlacementRecord,
    StagedRecord,
    guest_owner,
    guest_pages_owner,
    staging_owner,
)
from vfiotask.units import MAX_ID, GiB, format_size, parse_count, parse_size

TYPE_CHECKING = False  # the domain model is imported by prepare's caller; start never builds it
if TYPE_CHECKING:
    from vfiotask.integrations.libvirt.domain import Domain


class HookContext:
    """Everything the phases touch on the host, so tests can point it at fixtures.

    A plain class, not a dataclass: importing dataclasses and building one costs the hook
    milliseconds on every start.
    """

    def __init__(self, *, journal: GuestJournal | None = None, conf: Path | None = None,
                 host_root: Path = Path("/"), log: Callable[[str], None] | None = None) -> None:
        self.journal = journal or GuestJournal(conf=conf)
        self.conf = conf
        self.host_root = host_root
        self.log: Callable[[str], None] = log or (lambda message: None)

    def reserver(self) -> Any:
        from vfiotask.host.hugepages import HugepagePools
        from vfiotask.jobs.hugepages import HugepageReserver

        return HugepageReserver(HugepagePools(self.host_root))


# -- checks --------------------------------------------------------------------------------------


def check_devices(domain: Domain) -> None:
    """Every hostdev's IOMMU group must be usable, or QEMU fails later with a vaguer error."""
    from vfiotask.devices import check_devices_usable, sysfs_root_from_env

    root = sysfs_root_from_env(None)
    for managed in (False, True):
        addresses = [dev.address for dev in domain.hostdevs if dev.managed == managed]
        if addresses:
            check_devices_usable(addresses, root, managed=managed)


def qemu_memlock_limit(domain: Domain) -> int | None:
    """RLIMIT_MEMLOCK libvirt gives QEMU (None: unlimited), following libvirt's rule for VFIO guests.

    `<locked/>` makes it unlimited, `<memtune><hard_limit>` sets it; otherwise guest RAM plus
    1 GiB, counted once per device when a vIOMMU gives each device its own address space.
    """
    if domain.backing.locked:
        return None
    if domain.hard_limit is not None:
        return domain.hard_limit
    factor = len(domain.hostdevs) if domain.has_viommu else 1
    return factor * domain.ram + GiB


def check_memlock(domain: Domain) -> None:
    if not domain.hostdevs:
        return  # nothing will be pinned; and the accountant's imports (psutil) cost every start
    from vfiotask.memory.accountant import LockedMemoryAccountant

    ram = domain.ram
    try:
        LockedMemoryAccountant.for_budget(qemu_memlock_limit(domain), owner="QEMU").check(ram, "the guest's RAM")
    except MemlockLimitError as exc:
        raise MemlockLimitError(
            exc.message,
            hint=f"raise <memtune><hard_limit> to at least {format_size(ram + GiB)} or remove it",
            needed=exc.needed,
            limit=exc.limit,
            locked=exc.locked,
        ) from exc


def hugetlbfs_page_sizes(host_root: Path, default: int | None) -> set[int]:
    from vfiotask.host.mounts import mounts

    sizes = set()
    for mount in mounts(host_root):
        if mount.fstype == "hugetlbfs":
            text = mount.options.get("pagesize")
            size = parse_size(text) if text else default
            if size:
                sizes.add(size)
    return sizes


def hugepage_demands(domain: Domain, default: int) -> dict[int, dict[int | None, int]]:
    """Bytes needed per page size and host node."""
    demands: dict[int, dict[int | None, int]] = {}
    for cell, memory in domain.ram_parts:
        size = domain.page_size_for(cell) or default
        node = domain.numatune.host_node(cell)
        per_node = demands.setdefault(size, {})
        per_node[node] = per_node.get(node, 0) + memory
    return demands


# -- phases --------------------------------------------------------------------------------------


def prepare(domain: Domain, ctx: HookContext) -> GuestRecord:
    """Do everything for `start begin`; on any failure undo it all and raise.

    What an earlier preparation of the guest left (never released, or killed) is undone first, so
    a killed one followed by a new one starts clean instead of failing on its leftovers.  The RAM
    files are handed to QEMU's DAC label (`<seclabel model='dac'>`, which libvirt adds at this
    phase) last: until then only root can reach them, and release and recovery find them.
    """
    name = domain.name
    for done in recover_guest(name, ctx):
        ctx.log(f"{name}: {done}")
    if domain.config.fail:  # refused unless root's config sets fault_injection = true
        from vfiotask.faultinjection import for_guest

        for_guest(name, domain.config.fail, ctx.log)
    record = GuestRecord(domain.id, domain.uuid, time.time(), holder())
    undo: list[Callable[[], object]] = []
    ctx.journal.put_guest(name, record)
    try:
        label = _label_ids(domain)  # a DAC label naming no user fails here, before anything is made
        if domain.hostdevs:
            check_devices(domain)
        check_memlock(domain)
        domain, record = _place(domain, ctx, record)
        if domain.backing.uses_hugepages and domain.config.hugepages:
            record = _reserve_hugepages(domain, ctx, record, undo)
        if domain.backing.file_backed and domain.config.prefault:
            record = _populate_files(domain, ctx, record, undo, label)
        record = record._replace(prepared=time.time(), at_start=_at_start(record, label))
        record = ctx.journal.commit_guest(name, record)
    except BaseException as exc:
        for action in reversed(undo):
            try:
                action()
            except Exception as undo_exc:  # reported, never hides the first failure
                ctx.log(f"{name}: undo failed: {describe_exception(undo_exc)}")
        for problem in release(name, ctx):
            ctx.log(f"{name}: undo failed: {problem}")
        if isinstance(exc, VfiotaskError | KeyboardInterrupt):
            raise
        raise HostStateError(f"preparing guest {name} failed: {describe_exception(exc)}",
                             hint="everything taken was given back; fix the cause and start it again") from exc
    return record


def recover_guest(name: str, ctx: HookContext) -> list[str]:
    """Undo what a prepare of `name` left when it was killed or never released; says what it did."""
    if ctx.journal.guest(name) is None and not ctx.journal.journal_entries(guest_owner(name)):
        return []
    done: list[str] = []
    problems = release(name, ctx, done=done)
    return [f"released guest {name}'s earlier preparation", *done, *problems]


def recover(ctx: HookContext, match: Callable[[Owner], bool], *, dry_run: bool = False) -> list[str]:
    """Undo what killed prepares and stagings left (guests whose preparing process is gone, never
    those prepared and running), and remove the shared directories left empty; says what it did."""
    contents = ctx.journal.read()
    names = {name for name, record in contents.guests.items() if not holder_alive(record.holder)}
    staged: set[Owner] = set()
    for entry in Journal.entries(contents, orphaned=True):
        if entry.owner.role == GUEST:
            names.add(entry.owner.name)
        elif entry.owner.role == STAGING:
            staged.add(entry.owner)
    done: list[str] = []
    for name in sorted(names):
        if not match(guest_owner(name)):
            continue
        if dry_run:
            done.append(f"would release guest {name}'s preparation (its preparing process is gone)")
            continue
        problems = release(name, ctx, done=done)
        done += [f"guest {name}: {problem}" for problem in problems]
    if staged:
        from vfiotask.integrations.libvirt.ahead import give_back_staged_hugepages

    for owner in sorted(staged):
        if match(owner):
            done += undo_recorded(ctx.journal.journal, owner, dry_run=dry_run)
            done += give_back_staged_hugepages(ctx.journal, owner.name, orphaned=True, dry_run=dry_run)
    done += remove_empty_shared(ctx.journal.journal, dry_run=dry_run)  # of no one guest; only when empty
    return done


def _place(domain: Domain, ctx: HookContext, record: GuestRecord) -> tuple[Domain, GuestRecord]:
    """Apply NUMA from the device (placement.py) and note the choice in the log and the record."""
    from vfiotask.integrations.libvirt.placement import device_placement, placed

    placement = device_placement(domain, ctx.host_root)
    if domain.hostdevs:
        where = "left to the kernel" if placement.node is None else f"node {placement.node}"
        ctx.log(f"{domain.name}: memory placement: {where} ({placement.reason})")
    return placed(domain, placement), record._replace(placement=PlacementRecord(placement.node, placement.reason))


def _reserve_hugepages(domain: Domain, ctx: HookContext, record: GuestRecord,
                       undo: list[Callable[[], object]]) -> GuestRecord:
    reserver = ctx.reserver()
    default = reserver.resolve_page_size(None)
    mounted = hugetlbfs_page_sizes(ctx.host_root, default)
    for page_size, per_node in hugepage_demands(domain, default).items():
        reserver.resolve_page_size(page_size)
        if page_size not in mounted:
            raise HostStateError(
                f"guest {domain.name} wants {format_size(page_size)} hugepages, "
                "but no hugetlbfs of that page size is mounted",
                hint=f"mount -t hugetlbfs -o pagesize={page_size >> 20}M none /dev/hugepages, then restart libvirtd",
            )
        owner = guest_pages_owner(domain.name, page_size)
        undo.append(partial(reserver.release, owner))
        held = reserver.reserve(owner, per_node, page_size)
        record = record._replace(hugepages=(*record.hugepages, held))
        ctx.journal.put_guest(domain.name, record)
        ctx.log(f"{domain.name}: reserved {format_size(held.size)} of {format_size(page_size)} hugepages")
    return record


def _populate_files(domain: Domain, ctx: HookContext, record: GuestRecord, undo: list[Callable[[], object]],
                    label: tuple[int, int] | None) -> GuestRecord:
    from vfiotask.host.mounts import RAM_FILESYSTEMS, filesystem_type

    if paths.memory_backing_dir(ctx.conf) is None:
        # libvirt's default lies in the QEMU user's /var/lib/libvirt/qemu, where that user can swap
        # `ram` for anything: nothing is made there (and it is on disk, where prefaulting gains little)
        ctx.log(f"{domain.name}: no memory_backing_dir in qemu.conf; RAM files left to QEMU "
                "(vfiotask setup memory-backing makes one only root can write)")
        return record
    base = paths.require_backing_dir(ctx.conf)
    open_ram_root(paths.guests_place(ctx.conf)).close()  # one another user can change is refused, whatever is on it
    fstype = filesystem_type(base, ctx.host_root)
    if fstype not in RAM_FILESYSTEMS:
        ctx.log(f"{domain.name}: memory_backing_dir {base} is not tmpfs or hugetlbfs; RAM files left to QEMU")
        return record
    rams = paths.ram_files(domain)
    if fstype == "hugetlbfs":  # the files' pages, recorded like every reservation of the guest
        page_size, pages = hugetlbfs_pages(base, rams)
        pages_owner = guest_pages_owner(domain.name, page_size)
        held, new = reserve_pages(pages_owner, page_size, pages, ctx.reserver)
        if new:
            undo.append(partial(ctx.reserver().release, pages_owner))
        record = record._replace(hugepages=(*record.hugepages, held))
        ctx.journal.put_guest(domain.name, record)
    preparing = paths.preparing_place(domain, ctx.conf)
    final = paths.guest_place(domain, ctx.conf)
    record = record._replace(guest_dir=str(final.path), place=final)
    owner = guest_owner(domain.name)
    journal = ctx.journal.journal
    staged = ctx.journal.staged(domain.name)
    if staged is not None and _staged_whole(staged, rams):
        return _take_over_staging(domain, ctx, record, staged, final, label, undo)
    staged_files = {f.name: f for f in (staged.files if staged else ())}
    files: list[FileRecord] = []
    with open_private(preparing, journal, owner) as directory:
        for ram in rams:
            ahead = staged_files.pop(ram.name, None)
            if ahead is not None and ahead.size == ram.size and still_ours(ahead) \
                    and directory.lstat(ram.name) is None:
                done = _move_staged(ahead, directory, preparing, ram.name, journal, owner)
                undo.append(partial(_move_back, done, ahead))
                ctx.log(f"{domain.name}: took over staged {ram.name}")
            else:
                from vfiotask.integrations.progress import hook_meter

                meter = hook_meter(f"{domain.name}: populating {ram.name}", ram.size, ctx.log)
                done = populate_file(directory, preparing, ram.name, ram.size, ram.node, journal=journal,
                                     owner=owner, threads=domain.config.threads, progress=meter)
                ctx.log(f"{domain.name}: populated {ram.name} ({format_size(ram.size)}) "
                        f"in {done.seconds:.2f} s with {done.threads} thread(s)")
            files.append(done)
            record = record._replace(files=(*record.files, done))
            ctx.journal.put_guest(domain.name, record)
    if staged:
        from vfiotask.integrations.libvirt.ahead import unstage

        unstage(domain.name, journal=ctx.journal)
    handed = hand_over(journal, owner, preparing, final, files, label)
    who = f"uid {label[0]} gid {label[1]}" if label else "root"
    ctx.log(f"{domain.name}: RAM files handed to QEMU ({who})")
    return record._replace(files=tuple(handed))


def _staged_whole(staged: StagedRecord, rams: list[paths.RamFile]) -> bool:
    """Whether the staging is exactly the guest's RAM, file for file, and still there."""
    wanted = sorted((ram.name, ram.size) for ram in rams)
    return sorted((f.name, f.size) for f in staged.files) == wanted and all(still_ours(f) for f in staged.files)


def _take_over_staging(domain: Domain, ctx: HookContext, record: GuestRecord, staged: StagedRecord, final: Place,
                       label: tuple[int, int] | None, undo: list[Callable[[], object]]) -> GuestRecord:
    """A guest staged whole by `prepin --domain`: its staging directory becomes the guest's.

    The staging's entries become the guest's and its record the guest's files in one journal
    write, and the directory is handed to QEMU as it is: nothing is made, moved or populated
    file by file, which keeps a prepared start to a few journal writes.  A failed hand-over gives
    the directory back to the staging, untouched.
    """
    name = domain.name
    staging = paths.staging_place(name, ctx.conf)
    files = tuple(f._replace(staged_from=f.path) for f in staged.files)
    record = record._replace(files=files)
    journal = ctx.journal.journal
    with ctx.journal.locked() as contents:
        _reown(journal, contents, staging_owner(name), guest_owner(name))
        contents.staged.pop(name, None)
        contents.guests[name] = record
    undo.append(partial(_give_staging_back, ctx, name, staged))
    ctx.log(f"{name}: took over the files staged for it")
    handed = hand_over(journal, guest_owner(name), staging, final, list(files), label)
    who = f"uid {label[0]} gid {label[1]}" if label else "root"
    ctx.log(f"{name}: RAM files handed to QEMU ({who})")
    return record._replace(files=tuple(handed))


def _reown(journal: Journal[LibvirtContents], contents: LibvirtContents, old: Owner, new: Owner) -> None:
    """`old`'s files and directories become `new`'s (its staged hugepages' record goes: the
    reservation is the guest's own, listed in its record)."""
    for entry in journal.entries(contents, old):
        if isinstance(entry.change, FsChange):
            contents.intents = [item._replace(owner=new) if item.id == entry.id else item for item in contents.intents]
        else:
            journal.drop(contents, entry, save=False)


def _give_staging_back(ctx: HookContext, name: str, staged: StagedRecord) -> None:
    """Undo of a take-over whose hand-over failed: the files, still where they were staged, go
    back to root and to the staging (a directory already handed over is QEMU's: release's)."""
    if not all(still_ours(f) for f in staged.files):
        return
    for record in staged.files:
        with open_path(record.place.root, record.place.parts) as directory:
            fd = directory.open(record.name, os.O_RDONLY | os.O_NONBLOCK)
            try:
                if identity_of(os.fstat(fd)) == (record.dev, record.inode):
                    os.fchown(fd, 0, 0)
            finally:
                os.close(fd)
    with open_path(staged.files[0].place.root, staged.files[0].place.parts) as directory:
        os.fchown(directory.fd, 0, 0)
    journal = ctx.journal.journal
    with ctx.journal.locked() as contents:
        _reown(journal, contents, guest_owner(name), staging_owner(name))
        contents.guests.pop(name, None)
        contents.staged[name] = staged


def _move_staged(ahead: FileRecord, directory: Dir, place: Place, name: str, journal: Journal[LibvirtContents],
                 owner: Owner) -> FileRecord:
    """Rename a staged file into the guest's directory, journaled for the guest first (same inode)."""
    with journal.locked() as contents:
        entry = journal.intend(contents, owner, fs_change(FILE, directory, place, name, (ahead.dev, ahead.inode)))
    with open_path(ahead.place.root, ahead.place.parts) as staging:
        staging.rename(ahead.name, directory, name)
    with journal.locked() as contents:
        journal.done(contents, entry)
    return ahead._replace(path=str(place.path / name), staged_from=ahead.path, root=str(place.root),
                          parts=tuple(place.parts))


def _move_back(done: FileRecord, ahead: FileRecord) -> None:
    with open_path(done.place.root, done.place.parts) as directory, \
            open_path(ahead.place.root, ahead.place.parts) as staging:
        info = directory.lstat(done.name)
        if info is not None and identity_of(info) == (ahead.dev, ahead.inode):
            directory.rename(done.name, staging, ahead.name)


def _resolve_id(text: str, lookup: Callable[[str], Any], what: str) -> int:
    digits = text.removeprefix("+")
    if text.startswith("+") or (digits and set(digits) <= set("0123456789")):  # libvirt's +N: a number
        return parse_count(digits, f"QEMU's {what} in the guest's DAC label", minimum=0, maximum=MAX_ID)
    try:
        return int(lookup(text)[2])
    except KeyError as exc:
        raise HostStateError(
            f"QEMU's {what} {text!r} from the guest's DAC label does not exist",
            hint="create it (Debian: reinstall libvirt-daemon-system) or set user/group in qemu.conf",
        ) from exc


def _label_ids(domain: Domain) -> tuple[int, int] | None:
    """QEMU's uid and gid from the guest's DAC label; None when libvirt gave it none (QEMU runs as root)."""
    if domain.dac_label is None:
        return None
    return (_resolve_id(domain.dac_label.user, pwd.getpwnam, "user"),
            _resolve_id(domain.dac_label.group, grp.getgrnam, "group"))


def _at_start(record: GuestRecord, label: tuple[int, int] | None) -> AtStart:
    """What QEMU is handed: its uid:gid and how much of each file is populated."""
    return AtStart({f.path: f.allocated for f in record.files}, {f.path: f.inode for f in record.files},
                   time.time(), label)


def release(name: str, ctx: HookContext, *, done: list[str] | None = None) -> list[str]:
    """Give back what prepare took for `name`; returns the problems met (never raises for them).

    It is also the recovery of a killed prepare: the files and directories are undone from the
    journal's entries (only where the inode is still the one made), hugepage growth from the
    reservation's own entries; the shared directories the hook made go once they are empty.
    """
    problems: list[str] = []
    done = [] if done is None else done
    journal = ctx.journal.journal
    try:
        settle_handover(journal, guest_owner(name))
        done += undo_recorded(journal, guest_owner(name))
    except (OSError, VfiotaskError) as exc:
        problems.append(f"removing files: {describe_exception(exc)}")
    ctx.journal.pop_guest(name)
    try:
        reserver = ctx.reserver()
        done += reserver.recover(lambda owner: _guest_pages_of(owner, name))
        for held in reserver.owners():
            if _guest_pages_of(held.owner, name) and reserver.release(held.owner):
                done.append(f"released {held.owner}'s {format_size(held.size)} of hugepages")
    except (OSError, VfiotaskError) as exc:
        problems.append(f"releasing hugepages: {describe_exception(exc)}")
    try:
        done += remove_empty_shared(journal)
    except (OSError, VfiotaskError) as exc:
        problems.append(f"removing empty directories: {describe_exception(exc)}")
    return problems


def _guest_pages_of(owner: Owner, name: str) -> bool:
    """Whether `owner` is guest `name`'s hugepages (of any page size): compared whole, so guest
    `vm`'s release never takes guest `vm:1`'s."""
    return owner.role == GUEST_PAGES and owner.name == name

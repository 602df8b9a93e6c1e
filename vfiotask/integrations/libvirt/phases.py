"""What the hook does for a guest that is ours, phase by phase.

prepare: check the PCI devices' IOMMU groups and the memlock budget QEMU will get, reserve
hugepages on the guest's nodes, and create and populate file-backed RAM (or move staged files into
place) before QEMU opens it.  Each step registers its undo first, so any failure gives back
everything and libvirt aborts the start with our message.
start: hand the files to the DAC label QEMU runs as, and note how much of each file is populated.
release: give back what prepare recorded; idempotent, and it never fails the stop.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from vfiotask.errors import HostStateError, MemlockLimitError, VfiotaskError, describe_exception
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.guestjournal import GuestJournal, hugepage_owner, hugepage_owner_prefix
from vfiotask.integrations.libvirt.ramfiles import (
    FileRecord,
    allocated_bytes,
    chown_nofollow,
    hugetlbfs_pages,
    populate_file,
    reserve_pages,
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
        self.journal = journal or GuestJournal()
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
    return factor * guest_ram(domain) + GiB


def guest_ram(domain: Domain) -> int:
    return sum(cell.memory for cell in domain.cells) if domain.cells else domain.memory


def check_memlock(domain: Domain) -> None:
    if not domain.hostdevs:
        return  # nothing will be pinned; and the accountant's imports (psutil) cost every start
    from vfiotask.memory.accountant import LockedMemoryAccountant

    ram = guest_ram(domain)
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
    cells: list[tuple[int | None, int]] = [(cell.id, cell.memory) for cell in domain.cells] or [(None, domain.memory)]
    for cell, memory in cells:
        size = domain.page_size_for(cell) or default
        node = domain.numatune.host_node(cell)
        per_node = demands.setdefault(size, {})
        per_node[node] = per_node.get(node, 0) + memory
    return demands


# -- phases --------------------------------------------------------------------------------------


def prepare(domain: Domain, ctx: HookContext) -> dict[str, Any]:
    """Do everything for `prepare begin`; on any failure undo it all and raise."""
    name = domain.name
    if ctx.journal.guest(name) is not None:
        ctx.log(f"{name}: undoing a preparation that was never released")
        release(name, ctx)
    if domain.config.fail:
        from vfiotask.engine.faults import FAIL_ENV  # the engine package, only when injecting

        os.environ[FAIL_ENV] = domain.config.fail
    record: dict[str, Any] = {"id": domain.id, "uuid": domain.uuid, "began": time.time(),
                              "files": [], "dirs": [], "hugepages": []}
    undo: list[Callable[[], object]] = [partial(ctx.journal.pop_guest, name)]
    ctx.journal.put_guest(name, record)
    try:
        if domain.hostdevs:
            check_devices(domain)
        check_memlock(domain)
        domain = _place(domain, ctx, record)
        if domain.backing.uses_hugepages and domain.config.hugepages:
            _reserve_hugepages(domain, ctx, record, undo)
        if domain.backing.file_backed and domain.config.prefault:
            _populate_files(domain, ctx, record, undo)
        record["prepared"] = time.time()
        ctx.journal.put_guest(name, record)
    except BaseException as exc:
        for action in reversed(undo):
            try:
                action()
            except Exception as undo_exc:  # reported, never hides the first failure
                ctx.log(f"{name}: undo failed: {describe_exception(undo_exc)}")
        if isinstance(exc, VfiotaskError | KeyboardInterrupt):
            raise
        raise HostStateError(f"preparing guest {name} failed: {describe_exception(exc)}",
                             hint="everything taken was given back; fix the cause and start it again") from exc
    return record


def _place(domain: Domain, ctx: HookContext, record: dict[str, Any]) -> Domain:
    """Apply NUMA from the device (placement.py) and note the choice in the log and the record."""
    from vfiotask.integrations.libvirt.placement import device_placement, placed

    placement = device_placement(domain, ctx.host_root)
    if domain.hostdevs:
        where = "left to the kernel" if placement.node is None else f"node {placement.node}"
        ctx.log(f"{domain.name}: memory placement: {where} ({placement.reason})")
    record["placement"] = placement.to_dict()
    return placed(domain, placement)


def _reserve_hugepages(domain: Domain, ctx: HookContext, record: dict[str, Any],
                       undo: list[Callable[[], object]]) -> None:
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
        owner = hugepage_owner(domain.name, page_size)
        undo.append(partial(reserver.release, owner))
        held = reserver.reserve(owner, per_node, page_size)
        record["hugepages"].append(held.to_json())
        ctx.journal.put_guest(domain.name, record)
        ctx.log(f"{domain.name}: reserved {format_size(held.size)} of {format_size(page_size)} hugepages")


def _populate_files(domain: Domain, ctx: HookContext, record: dict[str, Any],
                    undo: list[Callable[[], object]]) -> None:
    from vfiotask.host.mounts import RAM_FILESYSTEMS, filesystem_type

    base = paths.require_backing_dir(ctx.conf)
    fstype = filesystem_type(base, ctx.host_root)
    if fstype not in RAM_FILESYSTEMS:
        ctx.log(f"{domain.name}: memory_backing_dir {base} is not tmpfs or hugetlbfs; RAM files left to QEMU")
        return
    rams = paths.ram_files(domain)
    if fstype == "hugetlbfs":
        page_size, pages = hugetlbfs_pages(base, rams)
        owner = hugepage_owner(domain.name, page_size)
        held, new = reserve_pages(owner, page_size, pages, ctx.reserver)
        if new:
            undo.append(partial(ctx.reserver().release, owner))
        record["hugepages"].append(held)
        ctx.journal.put_guest(domain.name, record)
    guest_dir = paths.guest_dir(domain, ctx.conf)
    record["guest_dir"] = str(guest_dir)
    for directory in reversed([guest_dir, *guest_dir.parents]):
        if directory.exists():
            continue
        directory.mkdir(mode=0o700 if directory == guest_dir else 0o755)
        record["dirs"].append(str(directory))
        undo.append(partial(_rmdir, directory))
    staged = ctx.journal.staged(domain.name) or {}
    staged_files = {Path(f["path"]).name: FileRecord.from_json(f) for f in staged.get("files", [])}
    for ram in rams:
        target = guest_dir / ram.name
        ahead = staged_files.pop(ram.name, None)
        if ahead is not None and ahead.size == ram.size and ahead.still_ours() and not os.path.lexists(target):
            os.rename(ahead.path, target)
            done = FileRecord(**{**ahead.to_json(), "path": str(target), "staged_from": ahead.path})
            undo.append(partial(os.rename, done.path, ahead.path))
            ctx.log(f"{domain.name}: moved staged {ram.name} into place")
        else:
            from vfiotask.integrations.progress import hook_meter

            done = populate_file(target, ram.size, ram.node, threads=domain.config.threads,
                                 progress=hook_meter(f"{domain.name}: populating {ram.name}", ram.size, ctx.log))
            undo.append(done.remove)
            ctx.log(f"{domain.name}: populated {ram.name} ({format_size(ram.size)}) "
                    f"in {done.seconds:.2f} s with {done.threads} thread(s)")
        record["files"].append(done.to_json())
        ctx.journal.put_guest(domain.name, record)
    if staged:
        for leftover in staged_files.values():
            leftover.remove()
        ctx.journal.pop_staged(domain.name)
        _rmdir(paths.staging_dir(domain.name, ctx.conf))


def _rmdir(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()


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


def start(name: str, label: tuple[str, str] | None, ctx: HookContext) -> dict[str, Any] | None:
    """Give the prepared files to QEMU's uid:gid (`label`: the user and group of the guest's DAC
    seclabel) and record how much of each is populated."""
    record = ctx.journal.guest(name)
    if record is None:
        return None
    files = [FileRecord.from_json(f) for f in record.get("files", [])]
    at_start: dict[str, Any] = {}
    if label is not None:
        uid = _resolve_id(label[0], pwd.getpwnam, "user")
        gid = _resolve_id(label[1], grp.getgrnam, "group")
        if record.get("guest_dir") in record.get("dirs", []):
            with contextlib.suppress(FileNotFoundError):
                os.chown(record["guest_dir"], uid, gid, follow_symlinks=False)
        for file in files:
            chown_nofollow(file, uid, gid)
        at_start["owner"] = [uid, gid]
    at_start["allocated"] = {file.path: allocated_bytes(file.path) for file in files}
    at_start["inodes"] = {file.path: os.lstat(file.path).st_ino for file in files if os.path.lexists(file.path)}
    at_start["time"] = time.time()
    ctx.journal.update_guest(name, at_start=at_start)
    return at_start


def release(name: str, ctx: HookContext) -> list[str]:
    """Give back what prepare took for `name`; returns the problems met (never raises for them)."""
    problems: list[str] = []
    record = ctx.journal.pop_guest(name) or {}
    for data in record.get("files", []):
        try:
            FileRecord.from_json(data).remove()
        except OSError as exc:
            problems.append(f"removing {data.get('path')}: {describe_exception(exc)}")
    for directory in reversed(record.get("dirs", [])):
        _rmdir(Path(directory))
    try:
        reserver = ctx.reserver()
        for held in reserver.owners():
            if held.owner.startswith(hugepage_owner_prefix(name)):
                reserver.release(held.owner)
    except (OSError, VfiotaskError) as exc:
        problems.append(f"releasing hugepages: {describe_exception(exc)}")
    return problems

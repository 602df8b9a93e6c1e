"""Hugepage reservations per owner: grown on every node at once, undone on a shortfall, journaled.

A reservation adds pages to the kernel's persistent pools for one owner (a guest, an admin's
name) and its release takes exactly those pages away again, so two owners never fight over a
count and a reboot-free host goes back to the pools it had.  Asking the kernel for pages on a
large NUMA host means compacting and zeroing memory per node, which is why each node's pool is
one part of an engine task; a node that cannot give all its pages puts its own pool back and
fails the task, and the engine shrinks the pools that already grew.  The journal lock serializes
reservations across processes, and an owner that reserves again gets what it already has.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vfiotask.engine import Engine, Part, ProgressFn, Task
from vfiotask.errors import (
    HostStateError,
    HugepageShortageError,
    TaskFailed,
    UsageError,
    VfiotaskError,
    describe_exception,
)
from vfiotask.host.cpus import host_engine
from vfiotask.host.freemem import free_memory
from vfiotask.host.hugepages import HugepagePools, PoolState
from vfiotask.host.hugetlbfs import HugepageHolder, hugepage_holders
from vfiotask.host.meminfo import meminfo
from vfiotask.journal import Journal, boot_id, same_boot
from vfiotask.journalrecords import (
    Entry,
    HugepageRecord,
    HugepagesContents,
    Owner,
    PoolGrowth,
    Reservation,
    hugepage_owner,
    is_normal_path,
    node_key,
)
from vfiotask.testpoints import crash_point
from vfiotask.units import format_size

log = logging.getLogger(__name__)

TASK_NAME = "hugepages"

__all__ = ["HugepageReserver", "Release", "Reservation", "release", "reserve", "validate_owner"]


@dataclass(frozen=True)
class Release:
    """What a release asked the pools to drop, what they really gave back, and what holds the rest."""

    held: Reservation
    freed_pages: int
    holders: list[HugepageHolder]
    unmounted: str | None = None

    @property
    def kept_pages(self) -> int:
        return max(sum(self.held.pages.values()) - self.freed_pages, 0)


def validate_owner(owner: str) -> str:
    if not owner or len(owner) > 200 or not owner.isascii() or not owner.isprintable():
        raise UsageError(f"owner {owner!r} is not usable", hint="use a short printable ASCII name, e.g. the guest's")
    return owner


def owner_of(owner: Owner | str) -> Owner:
    """A reservation's owner: given as it is, or from its text (a guest's `libvirt:NAME:PAGESIZE`,
    or an administrator's name), checked like every owner a user types."""
    return owner if isinstance(owner, Owner) else hugepage_owner(validate_owner(owner))


class HugepageReserver:
    """Reservations against the pools under `pools.root`, journaled in `journal`."""

    def __init__(
        self,
        pools: HugepagePools | None = None,
        journal: Journal[HugepagesContents] | None = None,
        engine: Engine | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.pools = pools or HugepagePools()
        self.journal = journal or Journal(HugepagesContents)
        self.engine = engine
        self.progress = progress  # (bytes of the pools grown so far, bytes asked for), per node done

    # -- choosing ------------------------------------------------------------------------------

    def resolve_page_size(self, page_size: int | None) -> int:
        sizes = self.pools.page_sizes()
        if not sizes:
            raise HugepageShortageError(
                "this kernel offers no hugepage pools", hint="enable CONFIG_HUGETLBFS or back the guest otherwise"
            )
        if page_size is None:
            default = self.pools.default_page_size()
            return default if default in sizes else sizes[0]
        if page_size not in sizes:
            offered = ", ".join(format_size(size) for size in sizes)
            raise UsageError(f"no hugepage pool of {format_size(page_size)}", hint=f"use one of: {offered}")
        return page_size

    def _check_node(self, node: int | None) -> None:
        if node is not None and node not in self.pools.nodes():
            known = ", ".join(map(str, self.pools.nodes())) or "none"
            raise UsageError(f"NUMA node {node} has no hugepage pools", hint=f"use one of the nodes: {known}")

    # -- reserving -----------------------------------------------------------------------------

    def reserve(self, owner: Owner | str, demands: Mapping[int | None, int], page_size: int | None = None,
                mount: Path | None = None, *, use_free: bool = False) -> Reservation:
        """Give `owner` at least `demands[node]` bytes of hugepages on each node, or nothing at all.

        `use_free`: count the pool's available pages first (those no other owner's reservation
        may still need) and grow it only by the shortfall, so that pages an administrator put in
        the pool at boot are used before the pool grows; the reservation then holds (and its
        release gives back) only the pages it added.  For pages the caller faults in at once
        (the hook's RAM files), not for pages a later mapping will take.

        `mount`: also mount a hugetlbfs of the page size there (made if missing), as
        dpdk-hugepages.py does, so that files of that size can be made; release unmounts it.
        """
        owner = owner_of(owner)
        size = self.resolve_page_size(page_size)
        wanted: dict[int | None, int] = {}
        for node, nbytes in demands.items():
            self._check_node(node)
            if nbytes <= 0:
                raise UsageError(f"hugepage size {nbytes} must be greater than zero", hint="give a size such as 1G")
            wanted[node] = wanted.get(node, 0) + -(-nbytes // size)
        if not wanted:
            raise UsageError("nothing to reserve", hint="give a size")
        with self.journal.locked() as contents:
            self._recover(contents, lambda _owner: True, dry_run=False)  # exact "before" counts need no orphans
            owners = contents.owners
            if owner in owners:
                held = owners[owner]
                if held.page_size == size and dict(held.wanted) == wanted:
                    return Reservation(owner, size, held.pages, already_held=True)
                raise UsageError(
                    f"owner {str(owner)!r} already holds {format_size(held.reservation.size)} of hugepages",
                    hint=f"release it first: vfiotask hugepages release --owner {owner}",
                )
            grow = self._shortfall(size, wanted, owners) if use_free else dict(wanted)
            grow = {node: count for node, count in grow.items() if count > 0}
            self._check_memory(size, grow)
            if mount is not None:
                self._check_mount_point(mount)
            growth = {node: PoolGrowth(size, node, self.pools.state(size, node).total, count)
                      for node, count in grow.items()}
            intents = {node: self.journal.intend(contents, owner, change) for node, change in growth.items()}
            try:
                if grow:
                    self._grow(size, grow, contents, intents, growth)
            except BaseException:  # the task undid its growth: the intents go, on disk too
                self.journal.drop(contents, *intents.values())
                raise
            self.journal.drop(contents, *intents.values(), save=False)  # the owner's record replaces them
            record = HugepageRecord(owner, size, grow, wanted, boot_id())
            if mount is not None:
                owners[owner] = record._replace(mount=str(mount), mount_made_dir=not mount.exists())
                self.journal.save(contents)  # written down before the mount: a crash leaves it to undo
                try:
                    self._mount(mount, size)
                except BaseException as exc:
                    failures = self._shrink(Reservation(owner, size, grow))
                    self._remove_mount_record(owners, owner)
                    if failures:  # the pools kept the growth: the record (without the mount) stays for release
                        owners[owner] = record
                    self.journal.save(contents)  # the record written before the mount goes, or loses its mount
                    if failures and isinstance(exc, Exception):
                        message = exc.message if isinstance(exc, VfiotaskError) else describe_exception(exc)
                        raise HostStateError(
                            f"{message}, and the pools it grew could not be shrunk back: {'; '.join(failures)}",
                            hint=f"give them back with: vfiotask hugepages release --owner {owner}",
                        ) from exc
                    raise
            owners[owner] = owners.get(owner) or record
        return Reservation(owner, size, grow)

    def _shortfall(self, page_size: int, wanted: dict[int | None, int],
                   owners: Mapping[Owner, HugepageRecord]) -> dict[int | None, int]:
        """Pages each node's pool must grow by once its available pages, less what other owners
        hold there (their pages may not be taken yet), are counted."""
        grow = {}
        for node, count in wanted.items():
            others = sum(record.pages.get(node, 0) for record in owners.values() if record.page_size == page_size)
            spare = max(self.pools.state(page_size, node).available - others, 0)
            grow[node] = max(count - spare, 0)
        return grow

    def _check_mount_point(self, mount: Path) -> None:
        from vfiotask.host.mounts import mounts

        if not is_normal_path(str(mount)):  # as the journal records it, and reads it back
            raise UsageError(f"--mount {mount} is not an absolute path without '.' or '..'",
                             hint="give a directory such as /dev/hugepages1G")
        if not mount.parent.is_dir():
            raise UsageError(f"--mount {mount}: {mount.parent} is not a directory",
                             hint="give a path whose parent directory exists")
        if mount.is_symlink() or (mount.exists() and not mount.is_dir()):
            raise UsageError(f"--mount {mount} is not a directory", hint="give a directory, or a path to create")
        if mount.exists() and any(mount.iterdir()):
            raise UsageError(f"--mount {mount} is not empty", hint="give an empty or missing directory")
        if any(m.mountpoint == mount for m in mounts(self.pools.root)):
            raise UsageError(f"something is already mounted on {mount}", hint="give another directory")

    def _mount(self, mount: Path, page_size: int) -> None:
        """Mount through the directory's descriptor: the parent is the administrator's path, but a
        link put at the last name (in /tmp, say) between the check and the mount is never followed."""
        from vfiotask.dirfd import open_root
        from vfiotask.host import libc

        try:
            with open_root(mount.parent) as parent:
                target = parent.mkdir(mount.name, 0o755) if parent.lstat(mount.name) is None \
                    else parent.sub(mount.name)
                with target:
                    libc.mount("hugetlbfs", f"/proc/self/fd/{target.fd}", "hugetlbfs",
                               libc.MS_NOSUID | libc.MS_NODEV, f"pagesize={page_size // 1024}K")
        except OSError as exc:
            raise HostStateError(f"cannot mount a hugetlbfs on {mount}: {describe_exception(exc)}",
                                 hint="run as root; nothing was kept") from exc

    @staticmethod
    def _remove_mount_record(owners: dict[Owner, HugepageRecord], owner: Owner) -> None:
        record = owners.pop(owner, None)
        if record is not None and record.mount is not None and record.mount_made_dir:
            _remove_made_dir(Path(record.mount))

    def _check_memory(self, page_size: int, wanted: dict[int | None, int]) -> None:
        """Refuse a request the host's available memory cannot cover, before touching a pool.

        Growing a pool takes every page the kernel can find until it has enough: a request far
        beyond what is available (a typo, 4T for 4G) would empty the host's free memory for a
        moment before the shortfall is seen and given back, and other processes could be
        reclaimed or killed meanwhile.
        """
        info = meminfo(self.pools.root) if (self.pools.root / "proc/meminfo").exists() else {}
        if "MemAvailable" not in info:  # a fixture tree that does not say: the pools alone decide
            return
        needed = sum(wanted.values()) * page_size
        available = info["MemAvailable"]
        if needed > available:
            raise HugepageShortageError(
                f"{sum(wanted.values())} hugepages of {format_size(page_size)} ({format_size(needed)}) are more "
                f"than the {format_size(available)} of memory this host has available; no pool was changed",
                hint="ask for less, free memory, or reserve at boot (hugepages= on the kernel command line)",
            )

    def _grow(self, page_size: int, wanted: dict[int | None, int], contents: HugepagesContents,
              intents: dict[int | None, Entry], growth: dict[int | None, PoolGrowth]) -> None:
        order = list(wanted)
        lock = threading.Lock()
        added: dict[int, int] = {}

        def grow(start: int, end: int) -> None:
            for index in range(start, end):
                node = order[index]
                before = self.pools.state(page_size, node).total
                got = self.pools.set_total(page_size, before + wanted[node], node) - before
                crash_point("hugepages: pool grown")  # the pool grew; its intent on disk says how to give it back
                won = 0
                if got < wanted[node]:
                    got, won = self._retry_after_compaction(page_size, node, before, wanted[node], got)
                if got < wanted[node]:
                    self.pools.set_total(page_size, before, node)
                    where = "the global pool" if node is None else f"node {node}"
                    raise HugepageShortageError(
                        f"{where} gave {max(got, 0)} of {wanted[node]} hugepages of {format_size(page_size)} "
                        f"asked for, {won} of them won by dropping clean caches and compacting; nothing was kept"
                        + self._fragmentation(page_size, node),
                        hint="free memory or reserve at boot (hugepages= on the kernel command line), then retry",
                    )
                with lock:
                    added[index] = got
                    self.journal.done(contents, intents[node], growth[node]._replace(got=got))
                    if self.progress is not None:
                        self.progress(sum(added.values()) * page_size, sum(wanted.values()) * page_size)

        def shrink(start: int, end: int) -> None:
            for index in range(start, end):
                node = order[index]
                with lock:
                    count = added.pop(index, 0)
                total = self.pools.state(page_size, node).total
                self.pools.set_total(page_size, max(total - count, 0), node)

        parts = [Part(index, 1, node) for index, node in enumerate(order)]
        task = Task(name=TASK_NAME, chunk=grow, parts=parts, undo=shrink, min_chunk=1, align=1)
        try:
            (self.engine or host_engine()).run(task)
        except TaskFailed as exc:
            if exc.undo_errors:
                raise HostStateError(
                    f"hugepage reservation failed and could not be undone: {exc.one_line()}",
                    hint="check the pools with 'vfiotask hugepages status' and shrink them by hand",
                ) from exc
            if isinstance(exc.cause, VfiotaskError):
                raise exc.cause from exc
            raise VfiotaskError(
                f"hugepage reservation failed ({describe_exception(exc.cause)}); nothing was kept",
                hint="check the pools with 'vfiotask hugepages status' and the kernel log",
            ) from exc

    def _retry_after_compaction(self, page_size: int, node: int | None, before: int, wanted: int,
                                got: int) -> tuple[int, int]:
        """A short pool: drop clean caches, compact the node, ask once more.  (pages got, pages won)."""
        where = "every node" if node is None else f"node {node}"
        log.info("hugepages: %s gave %d of %d pages; dropping clean caches and compacting it", where, got, wanted)
        try:
            self.pools.make_room(node)
        except OSError as exc:
            log.info("hugepages: cannot compact %s: %s", where, describe_exception(exc))
            return got, 0
        again = self.pools.set_total(page_size, before + wanted, node) - before
        log.info("hugepages: compaction won %d pages on %s", again - got, where)
        return again, again - got

    def _fragmentation(self, page_size: int, node: int | None) -> str:
        """What is fragmented, from the free lists, for the error (empty where they are not shown)."""
        try:
            free = free_memory(self.pools.root)
        except OSError:
            return ""
        memories = list(free.values()) if node is None else [m for n, m in free.items() if n == node]
        return "".join(f"; {memory.fragmentation(page_size)}" for memory in memories)

    # -- releasing -----------------------------------------------------------------------------

    def release(self, owner: Owner | str) -> Reservation | None:
        """Give back what `owner` holds; None when it holds nothing (releasing twice is harmless)."""
        done = self.release_report(owner)
        return done.held if done else None

    def release_report(self, owner: Owner | str) -> Release | None:
        """Release, and measure what the pools really gave back: a page a file on hugetlbfs keeps
        or a process maps stays (as a surplus page) however far the pool is shrunk.

        Growth a killed reservation of `owner` left (recorded as intents) is given back first.
        """
        owner = owner_of(owner)
        with self.journal.locked() as contents:
            self._recover(contents, lambda other: other == owner, dry_run=False)  # only its own: exactly
            record = contents.owners.get(owner)
            if record is None:
                return None
            held = record.reservation
            unmounted = self._unmount(record)
            before = self._pages(held)
            failures = self._shrink(held)
            freed = before - self._pages(held)
            del contents.owners[owner]
        if failures:
            raise HostStateError(
                f"could not shrink every pool for {str(owner)!r}: {'; '.join(failures)}",
                hint="check the pools with 'vfiotask hugepages status'",
            )
        kept = sum(held.pages.values()) - freed
        holders = hugepage_holders(self.pools.root, self.pools.default_page_size()) if kept > 0 else []
        return Release(held, max(freed, 0), holders, unmounted)

    def _pages(self, held: Reservation) -> int:
        """Every page of the pools `held` touched (nr_hugepages counts surplus pages too)."""
        total = 0
        for node in held.pages:
            with contextlib.suppress(OSError):
                total += self.pools.state(held.page_size, node).total
        return total

    def _shrink(self, held: Reservation) -> list[str]:
        failures = []
        for node, count in held.pages.items():
            try:
                total = self.pools.state(held.page_size, node).total
                self.pools.set_total(held.page_size, max(total - count, 0), node)
            except OSError as exc:
                failures.append(f"node {node_key(node)}: {describe_exception(exc)}")
        return failures

    def _unmount(self, record: HugepageRecord) -> str | None:
        """Unmount the hugetlbfs `reserve --mount` made; one still in use stays, and is named."""
        from vfiotask.host import libc

        mount = record.mount
        if not mount:
            return None
        try:
            libc.umount(mount)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: not mounted any more
                log.warning("hugepages: %s stays mounted: %s", mount, describe_exception(exc))
                return None
        if record.mount_made_dir:
            _remove_made_dir(Path(mount))
        return mount

    # -- recovering ----------------------------------------------------------------------------

    def recover(self, match: Callable[[Owner], bool] = lambda _owner: True, *, dry_run: bool = False) -> list[str]:
        """Give back pool growth whose reserving process died before it was recorded as an owner's;
        forget reservations of an earlier boot (the kernel's pools started afresh).  Says what it did."""
        with self.journal.locked() as contents:
            return self._recover(contents, match, dry_run=dry_run)

    def _recover(self, contents: HugepagesContents, match: Callable[[Owner], bool], *, dry_run: bool) -> list[str]:
        actions: list[str] = []
        for entry in self.journal.entries(contents, orphaned=True):
            if not isinstance(entry.change, PoolGrowth) or not match(entry.owner):
                continue
            actions.append(self._undo_growth(entry, entry.change, dry_run=dry_run))
            if not dry_run:
                self.journal.drop(contents, entry, save=False)  # saved with the rest, at the end of the lock
        for owner, record in sorted(contents.owners.items(), key=lambda item: str(item[0])):
            if match(owner) and record.boot not in (None, boot_id()):
                actions.append(f"{'would forget' if dry_run else 'forgot'} {owner}'s hugepages of an earlier boot")
                if not dry_run:
                    del contents.owners[owner]
        return actions

    def _undo_growth(self, entry: Entry, growth: PoolGrowth, *, dry_run: bool) -> str:
        owner, page_size, node = entry.owner, growth.page_size, growth.node
        where = "the global pool" if node is None else f"node {node}"
        if not same_boot(entry.holder):
            return f"{'would forget' if dry_run else 'forgot'} {owner}'s pool growth of an earlier boot"
        total = self.pools.state(page_size, node).total
        grown = max(0, min(total - growth.before, growth.pages if growth.got is None else growth.got))
        verb = "would give back" if dry_run else "gave back"
        if grown and not dry_run:
            self.pools.set_total(page_size, total - grown, node)
        return f"{verb} {grown} hugepages of {format_size(page_size)} on {where} from {owner}'s interrupted reservation"

    def orphans(self) -> list[tuple[Entry, PoolGrowth]]:
        """Pool growth recorded by a reservation whose process died: shown by status until recovered."""
        contents = self.journal.read()
        return [(entry, entry.change) for entry in self.journal.entries(contents, orphaned=True)
                if isinstance(entry.change, PoolGrowth)]

    # -- showing -------------------------------------------------------------------------------

    def owners(self) -> list[Reservation]:
        contents = self.journal.read()
        return [record.reservation for _, record in sorted(contents.owners.items(), key=lambda item: str(item[0]))]

    def pools_state(self) -> list[PoolState]:
        states = []
        for size in self.pools.page_sizes():
            states.append(self.pools.state(size))
            states.extend(self.pools.state(size, node) for node in self.pools.nodes())
        return states


def reserve(owner: Owner | str, demands: Mapping[int | None, int], page_size: int | None = None,
            *, root: Path = Path("/")) -> Reservation:
    return HugepageReserver(HugepagePools(root)).reserve(owner, demands, page_size)


def release(owner: Owner | str, *, root: Path = Path("/")) -> Reservation | None:
    return HugepageReserver(HugepagePools(root)).release(owner)


def _remove_made_dir(path: Path) -> None:
    """Remove the mount point `reserve --mount` made, relative to its parent's descriptor and only
    while it is an empty directory (never a link or a file put at its name)."""
    from vfiotask.dirfd import open_root

    with contextlib.suppress(OSError, HostStateError), open_root(path.parent) as parent:
        parent.rmdir(path.name)

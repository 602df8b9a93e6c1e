"""Populate a stopped guest's RAM files ahead of its start (`vfiotask prepin --domain NAME`).

The files are made in a staging directory in root's private directory below memory_backing_dir
(the same filesystem, so the hook takes them over at `start begin` with one rename) and written
down in the journal.  A staged file is fresh memory no guest has run on; once a guest used it,
libvirt removes it at stop, so no start ever gets another run's data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vfiotask.errors import UsageError
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.domain import NAMESPACE, Domain, parse_domain, validate_name
from vfiotask.integrations.libvirt.guestjournal import GuestJournal
from vfiotask.integrations.libvirt.ramfiles import (
    hugetlbfs_pages,
    open_private,
    populate_file,
    remove_empty_shared,
    reserve_pages,
    still_ours,
)
from vfiotask.journal import undo_recorded
from vfiotask.journalrecords import (
    FileRecord,
    Reservation,
    StagedPages,
    StagedRecord,
    guest_pages_owner,
    staging_owner,
)
from vfiotask.units import format_size

if TYPE_CHECKING:  # the hook imports this module to take a staging over: no engine, no jobs
    from vfiotask.engine import ProgressFn


def stage(domain: Domain, *, threads: int = 0, conf: Path | None = None,
          journal: GuestJournal | None = None, progress: Callable[[str], ProgressFn | None] | None = None,
          ) -> tuple[list[FileRecord], bool]:
    """Populate `domain`'s RAM files in its staging directory; returns them and whether they were new."""
    from vfiotask.host.mounts import RAM_FILESYSTEMS, filesystem_type

    journal = journal or GuestJournal()
    name = validate_name(domain.name)
    if not domain.ours:  # the hook would never move them into place: memory held for nothing
        raise UsageError(
            f"guest {name} is not one the hook prepares (it has no <vfiotask:config>, and config.toml's "
            "prepare_guests does not take it), so files staged for it would never be used",
            hint=f"virsh metadata {name} {NAMESPACE} --config --key vfiotask --set '<config/>', "
            "or see prepare_guests in docs/libvirt.md",
        )
    if not domain.backing.file_backed:
        raise UsageError(
            f"guest {name}'s RAM is not file-backed, so there is nothing to populate ahead",
            hint=f"give it <source type='file'/> and <access mode='shared'/> (vfiotask tune --domain {name} "
            "--file-backed), or rely on the hook at start",
        )
    base = paths.require_backing_dir(conf)
    fstype = filesystem_type(base)
    if fstype not in RAM_FILESYSTEMS:
        raise UsageError(f"memory_backing_dir {base} is not tmpfs or hugetlbfs",
                         hint="point memory_backing_dir in qemu.conf at a tmpfs or hugetlbfs mount")
    wanted = paths.ram_files(domain)
    held = journal.staged(name)
    if held is not None:
        files = list(held.files)
        same = sorted((f.name, f.size) for f in files) == sorted((r.name, r.size) for r in wanted)
        if same and all(still_ours(f) for f in files):
            return files, False
        unstage(name, journal=journal)
    undo_recorded(journal.journal, staging_owner(name), orphaned=True)  # what a killed staging left
    give_back_staged_hugepages(journal, name, orphaned=True)
    place = paths.staging_place(name, conf)
    hugepages: Reservation | None = None
    done: list[FileRecord] = []
    try:
        if fstype == "hugetlbfs":  # the guest's reservation, taken over by the hook at its start
            hugepages = _reserve_staged(journal, name, base, wanted)
        with open_private(place, journal.journal, staging_owner(name)) as directory:
            for ram in wanted:
                meter = progress(f"{domain.name}: {ram.name}") if progress else None
                done.append(populate_file(directory, place, ram.name, ram.size, ram.node, journal=journal.journal,
                                          owner=staging_owner(name), threads=threads, progress=meter))
    except BaseException:
        _give_back(journal, name)
        raise
    journal.put_staged(name, StagedRecord(tuple(done), domain.uuid, time.time(), hugepages),
                       owner=staging_owner(name))
    return done, True


def unstage(name: str, *, journal: GuestJournal | None = None) -> list[FileRecord]:
    """Give back the memory of files staged for `name` and never used (moved ones are the guest's now)."""
    journal = journal or GuestJournal()
    record = journal.pop_staged(name)
    _give_back(journal, name)
    return list(record.files) if record is not None else []


def _give_back(journal: GuestJournal, name: str) -> None:
    """Remove what the staging of `name` made and release its hugepages (a failed staging, an unstage)."""
    undo_recorded(journal.journal, staging_owner(name))
    give_back_staged_hugepages(journal, name)
    remove_empty_shared(journal.journal)


def _reserve_staged(journal: GuestJournal, name: str, base: Path, wanted: list[paths.RamFile]) -> Reservation:
    """Reserve the hugepages the staged files take, recorded for the staging first: a staging killed
    after its pool grew leaves an entry that recovery (or the next staging) gives back."""
    page_size, pages = hugetlbfs_pages(base, wanted)
    owner = guest_pages_owner(name, page_size)
    with journal.locked() as contents:
        entry = journal.journal.intend(contents, staging_owner(name), StagedPages(owner))
    held, new = reserve_pages(owner, page_size, pages, _reserver)
    with journal.locked() as contents:
        if new:
            journal.journal.done(contents, entry)
        else:  # held before this staging (a prepared guest's): never this staging's to give back
            journal.journal.drop(contents, entry)
    return held


def give_back_staged_hugepages(journal: GuestJournal, name: str, *, orphaned: bool = False,
                               dry_run: bool = False) -> list[str]:
    """Release the reservation a staging of `name` made, unless a guest's prepare has taken it over
    (then only the staging's record of it goes): each reservation is given back exactly once."""
    with journal.locked() as contents:
        entries = [(e, e.change) for e in journal.journal.entries(contents, staging_owner(name), orphaned=orphaned)
                   if isinstance(e.change, StagedPages)]
    actions: list[str] = []
    for entry, staged in entries:
        owner = staged.hugepages_owner
        if journal.guest(name) is None:
            if dry_run:
                actions.append(f"would release {owner}'s hugepages staged for {name}")
            elif (held := _reserver().release(owner)) is not None:
                actions.append(f"released {owner}'s {format_size(held.size)} of hugepages staged for {name}")
        if not dry_run:
            with journal.locked() as contents:
                journal.journal.drop(contents, entry)
    return actions


def stage_defined(name: str, *, threads: int = 0, uri: str | None = None,
                  progress: Callable[[str], ProgressFn | None] | None = None) -> tuple[list[FileRecord], bool]:
    """Stage the RAM files of the defined, stopped guest `name`, read from libvirt at `uri`."""
    from vfiotask.config import config_path, get
    from vfiotask.integrations.libvirt import connection

    name = validate_name(name)
    if get("staging") == "off":
        raise UsageError(f"staging is off in {config_path()}: prepin --domain prepares nothing ahead of a start",
                         hint="set staging = \"on\" there, or let the hook prepare the guest at its start")
    conn = connection.open_connection(uri or connection.URI, readonly=True)
    try:
        dom = connection.lookup(conn, name)
        if connection.is_active(dom):
            raise UsageError(f"guest {name} is running; prepin --domain prepares a guest before its start",
                             hint="shut it down first, or just start it: the hook prepares it at start")
        domain = parse_domain(connection.inactive_xml(dom))
    finally:
        connection.close(conn)
    return stage(domain, threads=threads or get("max_threads"), progress=progress)


def _reserver() -> Any:
    from vfiotask.jobs.hugepages import HugepageReserver

    return HugepageReserver()

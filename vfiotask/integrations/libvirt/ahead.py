"""Populate a stopped guest's RAM files ahead of its start (`vfiotask prepin --domain NAME`).

The files are made in a staging directory beside the guests' own directories (the same
filesystem, so the hook moves them into place at `prepare begin` with one rename) and written
down in the journal.  A staged file is fresh memory no guest has run on; once a guest used it,
libvirt removes it at stop, so no start ever gets another run's data.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vfiotask.engine import ProgressFn
from vfiotask.errors import UsageError
from vfiotask.integrations.libvirt import paths
from vfiotask.integrations.libvirt.domain import Domain, parse_domain, validate_name
from vfiotask.integrations.libvirt.guestjournal import GuestJournal, hugepage_owner
from vfiotask.integrations.libvirt.ramfiles import FileRecord, hugetlbfs_pages, populate_file, reserve_pages
from vfiotask.jobs.hugepages import HugepageReserver


def stage(domain: Domain, *, threads: int = 0, conf: Path | None = None,
          journal: GuestJournal | None = None, progress: Callable[[str], ProgressFn | None] | None = None,
          ) -> tuple[list[FileRecord], bool]:
    """Populate `domain`'s RAM files in its staging directory; returns them and whether they were new."""
    from vfiotask.host.mounts import RAM_FILESYSTEMS, filesystem_type

    journal = journal or GuestJournal()
    name = validate_name(domain.name)
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
        files = [FileRecord.from_json(f) for f in held.get("files", [])]
        same = sorted((Path(f.path).name, f.size) for f in files) == sorted((r.name, r.size) for r in wanted)
        if same and all(f.still_ours() for f in files):
            return files, False
        unstage(name, journal=journal)
    directory = paths.staging_dir(name, conf)
    hugepages: dict[str, Any] | None = None
    reserved = False
    if fstype == "hugetlbfs":  # the guest's reservation, taken over by the hook at its start
        page_size, pages = hugetlbfs_pages(base, wanted)
        hugepages, reserved = reserve_pages(hugepage_owner(name, page_size), page_size, pages, HugepageReserver)
    made: list[Path] = []
    done: list[FileRecord] = []
    try:
        for path in reversed([directory, *directory.parents]):
            if not path.exists():
                path.mkdir(mode=0o700)
                made.append(path)
        for ram in wanted:
            meter = progress(f"{domain.name}: {ram.name}") if progress else None
            done.append(populate_file(directory / ram.name, ram.size, ram.node, threads=threads, progress=meter))
    except BaseException:
        for record in done:
            record.remove()
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
        if reserved and hugepages is not None:
            HugepageReserver().release(hugepages["owner"])
        raise
    journal.put_staged(name, {"files": [r.to_json() for r in done], "uuid": domain.uuid, "staged": time.time(),
                              "hugepages": hugepages})
    return done, True


def unstage(name: str, *, journal: GuestJournal | None = None) -> list[FileRecord]:
    """Give back the memory of files staged for `name` and never used."""
    journal = journal or GuestJournal()
    record = journal.pop_staged(name) or {}
    files = [FileRecord.from_json(f) for f in record.get("files", [])]
    for file in files:
        file.remove()
        with contextlib.suppress(OSError):
            Path(file.path).parent.rmdir()
    if record.get("hugepages") and journal.guest(name) is None:  # a running guest has taken it over
        HugepageReserver().release(record["hugepages"]["owner"])
    return files


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

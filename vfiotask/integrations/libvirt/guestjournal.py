"""What the hook took for each guest, and what `prepin --domain` staged, in the state dir.

`release end` runs in a fresh process long after `prepare begin`, possibly after a crash of
libvirtd, so everything it must give back is written down by the process that took it.  The
files and directories in this journal may only be under memory_backing_dir (as qemu.conf sets
it now) or libvirt's default: an entry anywhere else refuses the whole journal when it is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vfiotask.integrations.libvirt import paths
from vfiotask.journal import Journal, committed
from vfiotask.journalrecords import (
    AtStart,
    Entry,
    GuestRecord,
    HugepagesContents,
    LibvirtContents,
    Owner,
    StagedRecord,
    guest_owner,
)


def allowed_roots(conf: Path | None = None) -> frozenset[str]:
    """Where the hook and `prepin --domain` may make files and directories: memory_backing_dir
    as qemu.conf sets it now, and libvirt's default for guests without it."""
    base = paths.memory_backing_dir(conf)
    return frozenset({str(paths.DEFAULT_RAM_ROOT), *([str(base)] if base is not None else [])})


def hugepages_held(owner: Owner, page_size: int, pages: dict[int | None, int], directory: Path | None = None) -> bool:
    """Whether `owner` holds exactly `pages` per node of `page_size`, read without importing the jobs.

    A guest whose files `prepin --domain` staged on hugetlbfs already holds its reservation, and
    the hook's start must not pay for importing the hugepage job to learn that.
    """
    record = Journal(HugepagesContents, directory).read().owners.get(owner)
    return record is not None and record.page_size == page_size and dict(record.wanted) == pages


class GuestJournal:
    """`guests[name]`: what prepare did; `staged[name]`: files populated ahead of a start."""

    def __init__(self, directory: Path | None = None, conf: Path | None = None) -> None:
        self.journal = Journal(LibvirtContents, directory, roots=lambda: allowed_roots(conf))

    @property
    def path(self) -> Path:
        return self.journal.path

    def read(self) -> LibvirtContents:
        return self.journal.read()

    @contextmanager
    def locked(self) -> Iterator[LibvirtContents]:
        with self.journal.locked() as contents:
            yield contents

    def guest(self, name: str) -> GuestRecord | None:
        return self.journal.read().guests.get(name)

    def staged(self, name: str) -> StagedRecord | None:
        return self.journal.read().staged.get(name)

    def put_guest(self, name: str, record: GuestRecord) -> None:
        with self.locked() as contents:
            contents.guests[name] = record

    def commit_guest(self, name: str, record: GuestRecord) -> GuestRecord:
        """The preparation is complete: it and its files belong to the guest now, not to this process."""
        record = record._replace(holder=committed())
        with self.locked() as contents:
            contents.guests[name] = record
            self.journal.commit(contents, guest_owner(name))
        return record

    def journal_entries(self, owner: Owner) -> list[Entry]:
        return self.journal.entries(self.journal.read(), owner)

    def record_start(self, name: str, at_start: AtStart) -> None:
        """What `start begin` did for a prepared guest (nothing when the guest is not recorded)."""
        with self.locked() as contents:
            if name in contents.guests:
                contents.guests[name] = contents.guests[name]._replace(at_start=at_start)

    def pop_guest(self, name: str) -> GuestRecord | None:
        with self.locked() as contents:
            return contents.guests.pop(name, None)

    def put_staged(self, name: str, record: StagedRecord, *, owner: Owner) -> None:
        """Staged files are complete: they belong to the staging of `name` now, not to this process."""
        with self.locked() as contents:
            contents.staged[name] = record
            self.journal.commit(contents, owner)

    def pop_staged(self, name: str) -> StagedRecord | None:
        with self.locked() as contents:
            return contents.staged.pop(name, None)

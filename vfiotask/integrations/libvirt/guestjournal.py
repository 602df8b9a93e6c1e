"""What the hook took for each guest, and what `prepin --domain` staged, in the state dir.

`release end` runs in a fresh process long after `prepare begin`, possibly after a crash of
libvirtd, so everything it must give back is written down by the process that took it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vfiotask.journal import Journal

JOURNAL_NAME = "libvirt"
HUGEPAGES_JOURNAL = "hugepages"  # vfiotask.jobs.hugepages.JOURNAL_NAME, named here so the hook need not import the job
OWNER_PREFIX = "libvirt:"


def hugepage_owner_prefix(name: str) -> str:
    return f"{OWNER_PREFIX}{name}:"


def hugepage_owner(name: str, page_size: int) -> str:
    """The owner of a guest's hugepage reservation: one per page size."""
    return f"{hugepage_owner_prefix(name)}{page_size}"


def hugepages_held(owner: str, page_size: int, pages: dict[int | None, int], directory: Path | None = None) -> bool:
    """Whether `owner` holds exactly `pages` per node of `page_size`, read without importing the jobs.

    A guest whose files `prepin --domain` staged on hugetlbfs already holds its reservation, and
    the hook's start must not pay for importing the hugepage job to learn that.
    """
    record = Journal(HUGEPAGES_JOURNAL, directory).read().get("owners", {}).get(owner)
    if not record or record.get("page_size") != page_size:
        return False
    wanted = {"any" if node is None else str(node): count for node, count in pages.items()}
    return bool(record.get("wanted", record.get("pages")) == wanted)


class GuestJournal:
    """`guests[name]`: what prepare did; `staged[name]`: files populated ahead of a start."""

    def __init__(self, directory: Path | None = None) -> None:
        self.journal = Journal(JOURNAL_NAME, directory)

    @property
    def path(self) -> Path:
        return self.journal.path

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        with self.journal.locked() as data:
            data.setdefault("guests", {})
            data.setdefault("staged", {})
            yield data

    def guest(self, name: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.journal.read().get("guests", {}).get(name)
        return record

    def staged(self, name: str) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.journal.read().get("staged", {}).get(name)
        return record

    def put_guest(self, name: str, record: dict[str, Any]) -> None:
        with self.locked() as data:
            data["guests"][name] = record

    def update_guest(self, name: str, **changes: Any) -> None:
        with self.locked() as data:
            if name in data["guests"]:
                data["guests"][name].update(changes)

    def pop_guest(self, name: str) -> dict[str, Any] | None:
        with self.locked() as data:
            record: dict[str, Any] | None = data["guests"].pop(name, None)
            return record

    def put_staged(self, name: str, record: dict[str, Any]) -> None:
        with self.locked() as data:
            data["staged"][name] = record

    def pop_staged(self, name: str) -> dict[str, Any] | None:
        with self.locked() as data:
            record: dict[str, Any] | None = data["staged"].pop(name, None)
            return record

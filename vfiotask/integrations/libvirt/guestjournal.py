"""What the hook took for each guest, and what `prepin --domain` staged, in the state dir.

`release end` runs in a fresh process long after `prepare begin`, possibly after a crash of
libvirtd, so everything it must give back is written down by the process that took it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vfiotask.journal import Journal, committed

JOURNAL_NAME = "libvirt"
HUGEPAGES_JOURNAL = "hugepages"  # vfiotask.jobs.hugepages.JOURNAL_NAME, named here so the hook need not import the job
OWNER_PREFIX = "libvirt:"


def guest_owner(name: str) -> str:
    """The journal owner of what prepare made for guest `name` (its directory and RAM files)."""
    return f"{OWNER_PREFIX}{name}"


def hugepage_owner_prefix(name: str) -> str:
    return f"{OWNER_PREFIX}{name}:"


def hugepage_owner(name: str, page_size: int) -> str:
    """The owner of a guest's hugepage reservation: one per page size."""
    return f"{hugepage_owner_prefix(name)}{page_size}"


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

    def commit_guest(self, name: str, record: dict[str, Any]) -> None:
        """The preparation is complete: it and its files belong to the guest now, not to this process."""
        with self.locked() as data:
            data["guests"][name] = {**record, "holder": committed()}
            self.journal.commit(data, guest_owner(name))

    def journal_entries(self, owner: str) -> list[dict[str, Any]]:
        return self.journal.entries(self.journal.read(), owner)

    def update_guest(self, name: str, **changes: Any) -> None:
        with self.locked() as data:
            if name in data["guests"]:
                data["guests"][name].update(changes)

    def pop_guest(self, name: str) -> dict[str, Any] | None:
        with self.locked() as data:
            record: dict[str, Any] | None = data["guests"].pop(name, None)
            return record

    def put_staged(self, name: str, record: dict[str, Any], *, owner: str) -> None:
        """Staged files are complete: they belong to the staging of `name` now, not to this process."""
        with self.locked() as data:
            data["staged"][name] = record
            self.journal.commit(data, owner)

    def pop_staged(self, name: str) -> dict[str, Any] | None:
        with self.locked() as data:
            record: dict[str, Any] | None = data["staged"].pop(name, None)
            return record

"""Undo what killed vfiotask processes left on the host, from every journal, in one order.

Every host change is journaled before it is made, naming the process making it; a change whose
process is gone before it completed (or handed the change to an owner) is undone here: a guest's
RAM files and directories, then its hugepages, other hugepage pool growth, backing files of
`prepin`, records of pins (which ended with their process), device bindings, helper slot files
no process holds, and unfinished journal writes.  Guests prepared and running, reservations
held and devices bound on purpose are never touched.  Running it again does nothing more.

`vfiotask recover` and the boot unit (`vfiotask recover --all`, hooks/vfiotask-recover.service)
both end here.  Every journal is read and checked whole first: one that is malformed stops the
recovery with its one line before anything is undone from any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from vfiotask.journalrecords import PREPIN_OWNER, Owner


class Action(NamedTuple):
    """One thing recovery did (or, in a dry run, would do), and the area it belongs to."""

    area: str
    action: str


def owner_matcher(name: str | None) -> Callable[[Owner], bool]:
    """Which journal owners `--owner NAME` means: the owner written NAME (an administrator's
    reservation, `prepin`, `libvirt:vm:2097152`), or anything of guest NAME (its preparation,
    staging and hugepages).  Compared whole: guest `vm:1`'s are never guest `vm`'s."""
    if name is None:
        return lambda _owner: True
    from vfiotask.jobs.hugepages import validate_owner

    validate_owner(name)
    return lambda owner: str(owner) == name or owner.guest == name


def check_journals() -> None:
    """Read every journal recovery acts on, whole, before anything is done (CorruptJournal, exit 1)."""
    from vfiotask.integrations.libvirt.guestjournal import GuestJournal
    from vfiotask.jobs.bind import bindings_journal
    from vfiotask.journal import Journal
    from vfiotask.journalrecords import FilesContents, HugepagesContents, PinsContents

    GuestJournal().read()
    for layout in (HugepagesContents, FilesContents, PinsContents):
        Journal(layout).read()
    bindings_journal().read()


def recover(owner: str | None = None, *, dry_run: bool = False) -> list[Action]:
    """Every journal's recovery, in the order that keeps counts exact; says what it did."""
    from vfiotask.engine.slots import SlotPool
    from vfiotask.integrations.libvirt import phases
    from vfiotask.jobs import bind
    from vfiotask.jobs.hugepages import HugepageReserver
    from vfiotask.jobs.pinjournal import recover_pins
    from vfiotask.journal import remove_stale_temporaries
    from vfiotask.memory.region import recover_files

    match = owner_matcher(owner)
    check_journals()
    steps: list[tuple[str, Callable[[], list[str]]]] = [
        ("libvirt", lambda: phases.recover(phases.HookContext(), match, dry_run=dry_run)),  # files, then hugepages
        ("hugepages", lambda: HugepageReserver().recover(match, dry_run=dry_run)),
    ]
    if match(PREPIN_OWNER):
        steps += [("files", lambda: recover_files(dry_run=dry_run)), ("pins", lambda: recover_pins(dry_run=dry_run))]
    if owner is None:
        steps += [
            ("bindings", lambda: bind.recover(dry_run=dry_run)),
            ("slots", lambda: SlotPool().remove_stale(dry_run=dry_run)),
            ("journals", lambda: remove_stale_temporaries(dry_run=dry_run)),
        ]
    return [Action(area, text) for area, step in steps for text in step()]

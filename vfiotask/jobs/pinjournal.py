"""Pins held, journaled with their holder, so `recover` and an administrator can tell a living
holder from a dead one (whose pins the kernel dropped with it) by pid and start time.

There is nothing to undo after a kill: a pin belongs to its process and ends with it.  The
record only says who holds what while it runs, and a dead holder's record is forgotten.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vfiotask.errors import StateDirError
from vfiotask.journal import Journal
from vfiotask.journalrecords import PREPIN_OWNER, PinsContents, PinsHeld
from vfiotask.units import format_size


@contextlib.contextmanager
def pins_recorded(size: int, backend: str) -> Iterator[None]:
    """Record `size` bytes pinned by `backend` in this process while the block runs."""
    journal = Journal(PinsContents)
    try:
        with journal.locked() as contents:
            for dead in journal.entries(contents, orphaned=True):  # their pins went with their process
                journal.drop(contents, dead)
            entry = journal.intend(contents, PREPIN_OWNER, PinsHeld(size, backend))
    except StateDirError:  # a user without a state dir: the pins still end with this process
        yield
        return
    try:
        yield
    finally:
        with journal.locked() as contents:
            journal.drop(contents, entry)


def recover_pins(*, dry_run: bool = False) -> list[str]:
    """Forget pin records of dead holders: the kernel unpinned with the process, nothing is left to undo."""
    journal = Journal(PinsContents)
    actions = []
    with journal.locked() as contents:
        for entry in journal.entries(contents, orphaned=True):
            if not isinstance(entry.change, PinsHeld):
                continue
            actions.append(f"{'would forget' if dry_run else 'forgot'} {format_size(entry.change.bytes)} "
                           f"of {entry.change.backend} pins of process {entry.holder.pid}, gone (the kernel "
                           "unpinned them)")
            if not dry_run:
                journal.drop(contents, entry)
    return actions

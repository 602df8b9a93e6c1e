"""Helper slots shared by every vfiotask process on the host.

Two guests started at once must not each spawn a helper per CPU.  A slot is a file under
`<state dir>/slots/` held with a non-blocking exclusive flock: taking one is a single syscall,
and when a process dies the kernel drops its locks, so a crash can never leak a slot.  The
caller of a task needs no slot: it always runs.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from vfiotask import statedir
from vfiotask.dirfd import Dir, identity_of, walk
from vfiotask.errors import HostStateError

log = logging.getLogger(__name__)

SLOTS_SUBDIR = "slots"


@dataclass
class SlotLease:
    """Slots held for one task; `release` (or process death) gives them back."""

    fds: list[int] = field(default_factory=list)

    def add(self, fds: list[int]) -> None:
        self.fds.extend(fds)

    def release(self) -> None:
        for fd in self.fds:
            _unlock(fd)
        self.fds.clear()


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class SlotPool:
    """Slot files in `directory` (default `<state dir>/slots`), or in-process caps when it is unusable.

    `shared=False` turns the cross-process part off: caps then apply to this task alone.
    """

    def __init__(self, directory: Path | None = None, *, shared: bool = True) -> None:
        self._directory = directory
        self.shared = shared

    def _open(self) -> Dir | None:
        """The slots directory, opened below the checked state dir without following links."""
        if not self.shared:
            return None
        try:
            with statedir.open_state_dir(self._directory.parent if self._directory else None) as base:
                name = self._directory.name if self._directory else SLOTS_SUBDIR
                return walk(base, [name], create=True, mode=0o700)
        except (OSError, HostStateError) as exc:  # the state dir says why it cannot be used
            log.debug("helper slots not shared across processes: %s", exc)
            return None

    def take(self, kind: str, cap: int, want: int, lease: SlotLease) -> int:
        """Take up to `want` of the `cap` slots named `kind` into `lease`; returns how many it got.

        Slot files are tried in order, so a process that finds slot 0 taken moves on at the
        cost of one failed flock.
        """
        want = min(want, cap)
        if want <= 0:
            return 0
        directory = self._open()
        if directory is None:
            return want
        got: list[int] = []
        refused = busy = 0
        with directory:
            for index in range(cap):
                if len(got) == want:
                    break
                name = f"{kind}-{index}"
                try:
                    fd = directory.open(name, os.O_RDWR | os.O_CREAT)
                except (OSError, HostStateError) as exc:
                    log.debug("cannot open helper slot %s: %s", name, exc)
                    refused += isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    busy += 1
                    continue
                if not _still_named(directory, name, fd):  # removed as stale meanwhile: not a slot any more
                    _unlock(fd)
                    busy += 1
                    continue
                got.append(fd)
        if not got and not busy and refused:
            # slots another user made (root's hook, say): like an unusable directory, cap in-process
            # rather than leave this user's tasks without a single helper
            log.debug("helper slots in %s are not ours to take; not shared across processes", directory.path)
            return want
        lease.add(got)
        return len(got)

    def held(self, kind: str, cap: int) -> int:
        """How many of `kind`'s slots some process holds now (for status displays and tests)."""
        directory = self._open()
        if directory is None:
            return 0
        busy = 0
        with directory:
            for index in range(cap):
                try:
                    fd = directory.open(f"{kind}-{index}", os.O_RDWR)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    busy += 1
                finally:
                    os.close(fd)
        return busy

    def remove_stale(self, *, dry_run: bool = False) -> list[str]:
        """Remove slot files no process holds (a crash leaves the file, never the lock); says what it did.

        Each is removed while locked, and a taker checks its slot still has its name after locking,
        so a slot being taken at that moment is never counted twice.
        """
        directory = self._open()
        if directory is None:
            return []
        actions = []
        with directory:
            for name in directory.names():
                try:
                    fd = directory.open(name, os.O_RDWR)
                except (OSError, HostStateError):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                try:
                    if dry_run:
                        actions.append(f"would remove unheld helper slot {directory.path / name}")
                    elif directory.unlink(name, identity_of(os.fstat(fd))):
                        actions.append(f"removed unheld helper slot {directory.path / name}")
                finally:
                    _unlock(fd)
        return actions


def _still_named(directory: Dir, name: str, fd: int) -> bool:
    info = directory.lstat(name)
    return info is not None and identity_of(info) == identity_of(os.fstat(fd))

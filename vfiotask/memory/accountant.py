"""Locked-memory accounting against RLIMIT_MEMLOCK, checked before the kernel is asked.

When a pin crosses RLIMIT_MEMLOCK the kernel answers ENOMEM with at best a dmesg line, and
QEMU says "VFIO_MAP_DMA failed: Cannot allocate memory".  Charging every chunk here first turns
that into an error that names the numbers and the fix, before anything is locked.  Charges come
from many worker threads at once, so the check-and-add is one step under a lock (ktask made
`mm->locked_vm` atomic for the same reason).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

from vfiotask.errors import MemlockLimitError, UsageError
from vfiotask.host.procfs import (
    CAP_IPC_LOCK,
    PROC,
    RLIM_INFINITY,
    has_capability,
    locked_memory,
    memlock_limit_from_limits,
)
from vfiotask.units import format_size

FIX_HINT = (
    "raise the memlock limit of {owner} (ulimit -l, prlimit --memlock, LimitMEMLOCK= in a systemd unit), "
    "give a libvirt guest <memtune><hard_limit> of at least RAM + 1 GiB, or run with CAP_IPC_LOCK"
)


class LockedMemoryAccountant:
    """Counts bytes a job locks on behalf of one process and refuses to cross its limit.

    Example:
        >>> acct = LockedMemoryAccountant()          # this process
        >>> acct.charge(2 << 20, "chunk 0")          # raises MemlockLimitError past the limit
        >>> acct.uncharge(2 << 20)
    """

    def __init__(self, pid: int | None = None, *, proc_root: Path = PROC) -> None:
        self.pid = pid
        self.owner = "this process" if pid is None else f"process {pid}"
        try:
            if proc_root == PROC:
                soft, _hard = psutil.Process(pid).rlimit(psutil.RLIMIT_MEMLOCK)
            else:
                soft, _hard = memlock_limit_from_limits(pid, proc_root=proc_root)
            capable = has_capability(CAP_IPC_LOCK, pid, proc_root=proc_root)
            locked = locked_memory(pid, proc_root=proc_root).total
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError) as exc:
            raise UsageError(f"{self.owner} does not exist", hint="give the PID of a running process") from exc
        except (psutil.AccessDenied, PermissionError) as exc:
            raise UsageError(f"cannot read the locked-memory limit of {self.owner}",
                             hint="run as root or as the process's owner") from exc
        self.unlimited = soft == RLIM_INFINITY or capable
        self.limit: int | None = None if soft == RLIM_INFINITY else int(soft)
        self.capable = capable
        self.baseline = locked
        self.charged = 0
        self._lock = threading.Lock()

    @classmethod
    def for_budget(cls, limit: int | None, locked: int = 0, *, owner: str = "QEMU") -> LockedMemoryAccountant:
        """The budget of a process that does not run yet (the hook checks what QEMU will have).

        `limit` None means unlimited.
        """
        self = cls.__new__(cls)
        self.pid = None
        self.owner = owner
        self.limit = limit
        self.capable = False
        self.unlimited = limit is None
        self.baseline = locked
        self.charged = 0
        self._lock = threading.Lock()
        return self

    @property
    def locked(self) -> int:
        """Bytes counted against the limit now: what was locked before plus what we charged."""
        return self.baseline + self.charged

    @property
    def room(self) -> int | None:
        """Bytes that can still be charged; None when unlimited."""
        if self.unlimited or self.limit is None:
            return None
        return max(self.limit - self.locked, 0)

    def _refusal(self, nbytes: int, what: str, locked: int) -> MemlockLimitError:
        limit = self.limit or 0
        subject = f"locking {what} ({format_size(nbytes)})" if what else f"locking {format_size(nbytes)}"
        return MemlockLimitError(
            f"{subject} would cross RLIMIT_MEMLOCK of {self.owner}: needs {format_size(locked + nbytes)} "
            f"({locked + nbytes} bytes) in all, limit is {format_size(limit)} ({limit} bytes), "
            f"{format_size(locked)} already locked",
            hint=FIX_HINT.format(owner=self.owner),
            needed=locked + nbytes,
            limit=limit,
            locked=locked,
        )

    def check(self, nbytes: int, what: str = "") -> None:
        """Raise MemlockLimitError if `nbytes` more would not fit; charges nothing."""
        if self.unlimited or self.limit is None:
            return
        with self._lock:
            locked = self.locked
        if locked + nbytes > self.limit:
            raise self._refusal(nbytes, what, locked)

    def charge(self, nbytes: int, what: str = "") -> None:
        """Count `nbytes` as locked, or raise MemlockLimitError and count nothing."""
        if nbytes < 0:
            raise ValueError("cannot charge a negative size")
        with self._lock:
            locked = self.locked
            if not self.unlimited and self.limit is not None and locked + nbytes > self.limit:
                raise self._refusal(nbytes, what, locked)
            self.charged += nbytes

    def uncharge(self, nbytes: int) -> None:
        """Give back what `charge` counted (on undo or release)."""
        with self._lock:
            if nbytes > self.charged:
                raise ValueError(f"uncharging {nbytes} bytes but only {self.charged} are charged")
            self.charged -= nbytes

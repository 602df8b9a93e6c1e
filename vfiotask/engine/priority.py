"""Helper priorities, per thread.

Helpers run at nice 19 so that a guest's preparation yields to whatever else the host is doing
(ktask measured a concurrent load slowed 76% by normal-priority helpers and 1% by nice-19 ones).
When the caller has no chunk left it lifts the helpers still working to its own priority, one
at a time, so a starved helper cannot hold up the task.  Lifting needs CAP_SYS_NICE or a
RLIMIT_NICE that allows it; where the kernel says no, the helper finishes at nice 19.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

LOWEST = 19


def thread_nice(tid: int | None = None) -> int:
    """The nice value of a thread (default: the calling one); Linux keeps nice per thread."""
    return os.getpriority(os.PRIO_PROCESS, tid if tid is not None else threading.get_native_id())


def set_nice(tid: int, nice: int) -> bool:
    """Set a thread's (or a single-threaded helper process's) nice value; False where refused."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("cannot set nice %d on %d: %s", nice, tid, exc)
        return False
    return True


class PriorityControl:
    """The lowering by the helper and the lifting by the caller, ordered by one lock.

    A helper lowers itself when it starts; if the caller lifted it before that, the helper keeps
    the priority it inherited from the caller instead of lowering itself afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._os_id: int | None = None
        self._lifted_to: int | None = None

    def started(self, os_id: int, *, lower_to: int | None) -> None:
        """Called once the helper's thread or process id is known; `lower_to` sets its nice now
        (None: it has already lowered itself, as a helper process does)."""
        with self._lock:
            self._os_id = os_id
            if self._lifted_to is not None:
                if lower_to is None:
                    set_nice(os_id, self._lifted_to)
                return
            if lower_to is not None:
                set_nice(os_id, lower_to)

    def lift(self, nice: int) -> bool:
        """Raise the helper to `nice`; True if it now runs (or will start) at that priority."""
        with self._lock:
            self._lifted_to = nice
            if self._os_id is None:
                return True
            return set_nice(self._os_id, nice)

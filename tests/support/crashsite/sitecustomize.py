"""Crash points for a process the test suite starts: with VFIOTASK_CRASH_AT=K, its K-th crash point
SIGKILLs it.

Python imports this at start-up when tests.support.crash_at puts this directory on PYTHONPATH.
It fills vfiotask's crash-point slot (`vfiotask.testpoints`), which nothing in vfiotask fills:
a process started any other way never kills itself, whatever VFIOTASK_CRASH_AT says.  The
count is per process (a forked helper counts on from its parent's count at the fork), so a kill
lands at a chosen place by count, never by timing.
"""

import os
import signal
import threading


def _install() -> None:
    text = os.environ.get("VFIOTASK_CRASH_AT", "")
    if not text:
        return
    from vfiotask.testpoints import set_crash_hook
    from vfiotask.units import parse_count

    target = parse_count(text, "VFIOTASK_CRASH_AT")
    lock = threading.Lock()
    reached = 0

    def crash(name: str) -> None:
        nonlocal reached
        with lock:
            reached += 1
            hit = reached == target
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)

    set_crash_hook(crash)


_install()

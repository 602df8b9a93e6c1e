"""Fault injection: a documented testing interface that makes one chunk of one task fail.

`VFIOTASK_FAIL=JOB:K[,JOB:K...]`: the K-th chunk claimed (1-based) by the task named JOB fails
with EIO before it runs.  It lives in the engine so that every client's undo path can be driven
from outside, the same way for threads and processes.
"""

from __future__ import annotations

import errno
import os

from vfiotask.errors import UsageError
from vfiotask.units import parse_count

FAIL_ENV = "VFIOTASK_FAIL"


def injected_failure(task_name: str) -> int | None:
    """The 1-based chunk index VFIOTASK_FAIL asks to fail for this task (`JOB:K[,JOB:K...]`).

    A malformed item is an error, not ignored: a typo would otherwise let a test of an undo path
    pass without ever failing a chunk.
    """
    spec = os.environ.get(FAIL_ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        job, _, index = item.partition(":")
        try:
            count = parse_count(index, "its chunk number")
            if not job.strip():
                raise UsageError("it names no task")
        except UsageError as exc:
            raise UsageError(f"{FAIL_ENV} item {item[:64]!r} is not JOB:K ({exc.message})",
                             hint="write the task name and a chunk number from 1, e.g. prefault:2") from None
        if job.strip() == task_name:
            return count
    return None


def injected_error(task_name: str, index: int) -> OSError:
    return OSError(errno.EIO, f"injected failure ({FAIL_ENV}={task_name}:{index})")

"""Running a task.  (Reference version: every chunk in the caller, in order.)"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator

from vfiotask.engine.task import HelperKind, Task, TaskReport
from vfiotask.errors import TaskFailed, UsageError

FAIL_ENV = "VFIOTASK_FAIL"


def injected_failure(task_name: str) -> int | None:
    """The 1-based chunk index VFIOTASK_FAIL asks to fail for this task (`JOB:K[,JOB:K...]`)."""
    spec = os.environ.get(FAIL_ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        job, _, index = item.partition(":")
        if job == task_name and index.isdigit() and int(index) > 0:
            return int(index)
    return None


def chunk_size_for(size: int, threads: int, min_chunk: int, align: int) -> int:
    """About four chunks per thread (load balancing), a multiple of align, never below min_chunk."""
    target = size // (threads * 4) if threads > 0 else size
    step = max(align, 1)
    chunk = max(target - target % step, min_chunk)
    chunk = -(-chunk // step) * step
    return max(chunk, step)


def split(task: Task, chunk: int) -> Iterator[tuple[int, int, int | None]]:
    for part in task.parts:
        position = part.start
        while position < part.end:
            end = min(position + chunk, part.end)
            yield position, end, part.node
            position = end


class Engine:
    """Runs tasks.  The reference version runs every chunk in the caller."""

    def run(self, task: Task) -> TaskReport:
        if task.size <= 0:
            raise UsageError(f"task {task.name!r} has nothing to do (size {task.size})")
        began = time.monotonic()
        chunk = chunk_size_for(task.size, 1, task.min_chunk, task.align)
        fail_at = injected_failure(task.name)
        done: list[tuple[int, int]] = []
        units = 0
        index = 0
        try:
            for start, end, _node in split(task, chunk):
                index += 1
                if fail_at == index:
                    raise OSError(errno.EIO, f"injected failure ({FAIL_ENV}={task.name}:{index})")
                task.chunk(start, end)
                done.append((start, end))
                units += end - start
                if task.progress:
                    task.progress(units, task.size)
        except BaseException as exc:
            undo_errors = self._undo(task, done)
            if isinstance(exc, KeyboardInterrupt):
                raise  # Ctrl-C or SIGTERM (errors.Terminated): undone, then re-raised as it came
            failing = (start, end)
            raise TaskFailed(task.name, failing[0], failing[1], exc, undo_errors) from exc
        return TaskReport(
            name=task.name,
            size=task.size,
            threads=1,
            chunks=len(done),
            chunk_size=chunk,
            seconds=time.monotonic() - began,
            helpers=HelperKind.THREAD,
            chunks_per_worker={"caller": len(done)},
        )

    @staticmethod
    def _undo(task: Task, done: list[tuple[int, int]]) -> list[tuple[int, int, BaseException]]:
        errors: list[tuple[int, int, BaseException]] = []
        if task.undo is None:
            return errors
        for start, end in reversed(done):
            try:
                task.undo(start, end)
            except Exception as exc:  # reported with the task's failure, never swallowed
                errors.append((start, end, exc))
        return errors


def run_task(task: Task) -> TaskReport:
    """Run `task` with a default engine."""
    return Engine().run(task)

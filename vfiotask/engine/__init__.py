"""ktask for Python: run a job over a range in chunks, on the CPUs the caller may use, with undo.

The engine knows nothing of memory, VFIO or libvirt.  A client gives it a `Task` (a range or
NUMA parts, a chunk function, an optional undo) and gets back a `TaskReport`, or a
`TaskFailed` after every completed chunk has been undone.
"""

from vfiotask.engine.runner import Engine, run_task
from vfiotask.engine.task import (
    ChunkFn,
    HelperKind,
    Part,
    ProgressFn,
    Task,
    TaskReport,
    UndoFn,
)

__all__ = [
    "ChunkFn",
    "Engine",
    "HelperKind",
    "Part",
    "ProgressFn",
    "Task",
    "TaskReport",
    "UndoFn",
    "run_task",
]

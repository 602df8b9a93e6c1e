"""ktask for Python: run a job over a range in chunks, on the CPUs the caller may use, with undo.

The engine knows nothing of memory, VFIO or libvirt.  A client gives it a `Task` (a range or
NUMA parts, a chunk function, an optional undo) and gets back a `TaskReport`, or a
`TaskFailed` after every completed chunk has been undone.  What it knows of the host comes
from a `CpuFactsSource` (`vfiotask.host.cpus.host_engine()` builds an engine with the real one).

Example::

    from vfiotask.engine import Engine, Task

    seen = bytearray(1 << 20)
    def chunk(start: int, end: int) -> None:
        seen[start:end] = bytes([1]) * (end - start)
    report = Engine().run(Task.over_range("fill", 0, len(seen), chunk, min_chunk=64 << 10))
    print(report.threads, report.chunks, report.plan.limited_by)   # e.g. 2 8 cpus
"""

from vfiotask.engine.facts import AffinityFacts, CpuFacts, CpuFactsSource
from vfiotask.engine.plan import CpuBudget, CpuPolicy, Plan, chunk_size_for, cpu_budget, plan
from vfiotask.engine.runner import Engine
from vfiotask.engine.slots import SlotPool
from vfiotask.engine.task import (
    ChunkFn,
    HelperKind,
    Part,
    ProgressFn,
    Task,
    TaskReport,
    UndoFn,
)
from vfiotask.engine.workers import HelperProcessDied

__all__ = [
    "AffinityFacts",
    "ChunkFn",
    "CpuBudget",
    "CpuFacts",
    "CpuFactsSource",
    "CpuPolicy",
    "Engine",
    "HelperKind",
    "HelperProcessDied",
    "Part",
    "Plan",
    "ProgressFn",
    "SlotPool",
    "Task",
    "TaskReport",
    "UndoFn",
    "chunk_size_for",
    "cpu_budget",
    "plan",
]

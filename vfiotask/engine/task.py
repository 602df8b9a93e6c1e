"""What a client hands the engine, and what it gets back."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vfiotask.engine.plan import CHUNKS_PER_THREAD, Plan

ChunkFn = Callable[[int, int], None]
"""Does the work for `[start, end)`; returns, or raises after undoing its own partial work."""

UndoFn = Callable[[int, int], None]
"""Reverts a chunk `[start, end)` that completed.  Must not fail; if it does, it is reported."""

ProgressFn = Callable[[int, int], None]
"""Called with (units done, units total) as chunks complete, from any worker thread."""


class HelperKind(enum.Enum):
    """Threads share the caller's address space; processes need a region they can map themselves."""

    THREAD = "thread"
    PROCESS = "process"


@dataclass(frozen=True)
class Part:
    """A piece of a task whose chunks should run on the CPUs of `node` (None: anywhere)."""

    start: int
    size: int
    node: int | None = None

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class Task:
    """A unit of parallel work.

    `min_chunk` is the smallest range worth a thread (ktask's VFIO user settled on 128 MiB);
    chunk boundaries are multiples of `align` from each part's start.  `max_threads` 0 means the
    engine's default cap.  With `helpers=PROCESS`, `process_chunk_factory` is called once in each
    helper process (after fork) and returns the chunk function to use there: a process cannot use
    the caller's mappings, so it must open its own view of the same object (a file, a memfd).
    Undo always runs in the caller.
    """

    name: str
    chunk: ChunkFn
    parts: Sequence[Part]
    undo: UndoFn | None = None
    min_chunk: int = 1
    align: int = 1
    max_threads: int = 0
    progress: ProgressFn | None = None
    helpers: HelperKind = HelperKind.THREAD
    process_chunk_factory: Callable[[], ChunkFn] | None = None
    chunks_per_thread: int = CHUNKS_PER_THREAD
    """Load balancing: more, smaller chunks shorten the tail when one worker runs slower (a helper
    at nice 19 next to other work); each chunk costs a claim and a call."""

    @classmethod
    def over_range(cls, name: str, start: int, size: int, chunk: ChunkFn, **kwargs: object) -> Task:
        """A task over one flat range `[start, start + size)` that may run anywhere."""
        return cls(name=name, chunk=chunk, parts=[Part(start, size)], **kwargs)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


@dataclass(frozen=True)
class TaskReport:
    """What a completed task did: enough for a user to see whether parallelism helped.

    `threads` and `chunks` are what ran (a helper the host refused to fork is missing); `plan`
    is what the engine chose and why.
    """

    name: str
    size: int
    threads: int
    chunks: int
    seconds: float
    plan: Plan
    helpers: HelperKind = HelperKind.THREAD
    chunks_per_worker: dict[str, int] = field(default_factory=dict)
    priority_raises: int = 0
    helper_nodes: tuple[int | None, ...] = ()
    """The node each helper ran on (None: anywhere)."""

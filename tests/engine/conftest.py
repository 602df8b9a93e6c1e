"""Helpers for engine tests: fixed CPU facts and a ledger that shows what ran and what was undone."""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vfiotask.engine import CpuFacts, Engine, SlotPool, Task

REPO_ROOT = Path(__file__).resolve().parents[2]


class FixedFacts:
    """CPU facts that do not change: the policy then decides from exactly what a test says."""

    def __init__(self, facts: CpuFacts) -> None:
        self.facts = facts
        self.reads = 0

    def read(self) -> CpuFacts:
        self.reads += 1
        return self.facts


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll until `condition` holds.  A caller that must leave chunks to a helper waits for the
    helper to have run one, not for a guessed time: a thread or process may start late on a
    loaded host.  The bound only keeps a broken engine from hanging the suite."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def facts_with(cpus: int = 4, **kwargs: object) -> CpuFacts:
    everything = frozenset(range(cpus))
    return CpuFacts(allowed=everything, online=everything, **kwargs)  # type: ignore[arg-type]


def private_engine(cpus: int = 4, **kwargs: object) -> Engine:
    """An engine on `cpus` fake CPUs whose helper slots are this engine's alone."""
    return Engine(FixedFacts(facts_with(cpus)), slots=SlotPool(shared=False), **kwargs)  # type: ignore[arg-type]


class Ledger:
    """One cell per unit of a task, in memory shared with forked helper processes.

    A chunk marks its cells 1 (a cell already marked is counted as a double visit); undo sets
    them back to 0 (undoing a cell that was never marked is counted too).  After a failed task
    every cell must be 0 again, and nothing may have been visited twice.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.cells = mmap.mmap(-1, size + 16)  # MAP_SHARED: a forked child writes the same pages
        self.doubles = 0
        self.bad_undos = 0

    def chunk(self, start: int, end: int) -> None:
        for index in range(start, end):
            if self.cells[index] != 0:
                self.cells[self.size] = 1  # a double, visible to the parent from any process
            self.cells[index] = 1

    def undo(self, start: int, end: int) -> None:
        for index in range(start, end):
            if self.cells[index] != 1:
                self.bad_undos += 1
            self.cells[index] = 0

    def marked(self) -> int:
        return sum(self.cells[: self.size])

    def had_doubles(self) -> bool:
        return self.cells[self.size] != 0

    def factory(self) -> object:
        return self.chunk

    def task(self, name: str = "ledger", **kwargs: object) -> Task:
        return Task.over_range(name, 0, self.size, self.chunk, undo=self.undo, **kwargs)


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    book = Ledger(256)
    yield book
    book.cells.close()


def thread_nice_from_proc(tid: int) -> int:
    """A thread's nice value as the kernel reports it (field 19 of /proc/self/task/TID/stat)."""
    text = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[16])


def process_nice_from_proc(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[16])

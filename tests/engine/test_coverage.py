"""Every unit of a task is covered exactly once, whatever the sizes, parts, threads or helpers."""

from __future__ import annotations

import mmap
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfiotask.engine import CpuFacts, Engine, HelperKind, Part, SlotPool, Task
from vfiotask.engine.plan import count_chunks

from .conftest import FixedFacts, wait_until

parts_strategy = st.lists(
    st.tuples(st.integers(0, 64), st.integers(0, 700), st.sampled_from([None, 0, 1])), min_size=1, max_size=4
).filter(lambda parts: sum(size for _, size, _ in parts) > 0)


def lay_out(spec: list[tuple[int, int, int | None]]) -> list[Part]:
    """Parts one after another with the given gaps, so a unit outside every part is never touched."""
    parts, position = [], 0
    for gap, size, node in spec:
        position += gap
        parts.append(Part(position, size, node))
        position += size
    return parts


def two_node_engine(cpus: int) -> Engine:
    everything = frozenset(range(cpus))
    half = cpus // 2 or 1
    nodes = {0: frozenset(range(half)), 1: frozenset(range(half, cpus)) or frozenset(range(half))}
    facts = CpuFacts(allowed=everything, online=everything, nodes=nodes)
    return Engine(FixedFacts(facts), slots=SlotPool(shared=False))


def check_exactly_once(cells: mmap.mmap | bytearray, parts: list[Part], end: int) -> None:
    inside = set()
    for part in parts:
        inside.update(range(part.start, part.end))
    for index in range(end):
        assert cells[index] == (1 if index in inside else 0), f"unit {index} visited {cells[index]} times"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=parts_strategy,
    min_chunk=st.integers(1, 200),
    align=st.integers(1, 64),
    max_threads=st.integers(0, 6),
    cpus=st.integers(1, 8),
)
def test_threads_cover_every_unit_once(
    spec: list[tuple[int, int, int | None]], min_chunk: int, align: int, max_threads: int, cpus: int
) -> None:
    parts = lay_out(spec)
    end = parts[-1].end
    cells = bytearray(end + 1)
    lock = threading.Lock()
    starts: list[tuple[int, int]] = []

    def chunk(start: int, stop: int) -> None:
        with lock:
            starts.append((start, stop))
            for index in range(start, stop):
                cells[index] += 1

    task = Task("cover", chunk, parts, min_chunk=min_chunk, align=align, max_threads=max_threads)
    report = two_node_engine(cpus).run(task)
    check_exactly_once(cells, parts, end + 1)
    assert report.chunks == len(starts) == count_chunks(parts, report.plan.chunk_size)
    assert report.plan.chunk_size % align == 0 and report.plan.chunk_size >= min_chunk
    assert 1 <= report.threads <= min(cpus, max_threads or cpus)
    for start, stop in starts:
        part = next(p for p in parts if p.start <= start < p.end)
        assert (start - part.start) % report.plan.chunk_size == 0
        assert stop - start <= report.plan.chunk_size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=parts_strategy, min_chunk=st.integers(1, 100), align=st.integers(1, 16), cpus=st.integers(2, 4))
def test_processes_cover_every_unit_once(
    spec: list[tuple[int, int, int | None]], min_chunk: int, align: int, cpus: int
) -> None:
    parts = lay_out(spec)
    end = parts[-1].end
    cells = mmap.mmap(-1, end + 1)  # shared with the forked helpers

    def chunk(start: int, stop: int) -> None:
        for index in range(start, stop):
            cells[index] += 1

    task = Task(
        "cover", chunk, parts, min_chunk=min_chunk, align=align,
        helpers=HelperKind.PROCESS, process_chunk_factory=lambda: chunk,
    )
    report = two_node_engine(cpus).run(task)
    check_exactly_once(cells, parts, end + 1)
    assert report.chunks == count_chunks(parts, report.plan.chunk_size)
    assert sum(report.chunks_per_worker.values()) == report.chunks
    cells.close()


def test_helper_processes_do_share_the_work() -> None:
    """With blocking chunks, a helper process really runs some of them (in another process)."""
    import os

    cells = mmap.mmap(-1, 64)
    parent = os.getpid()

    def factory() -> object:
        def chunk(start: int, stop: int) -> None:
            for index in range(start, stop):
                cells[index] = 2 if os.getpid() != parent else 1
            wait_until(lambda: 1 in cells[:64])  # leave chunks for the caller too
        return chunk

    def caller_chunk(start: int, stop: int) -> None:
        for index in range(start, stop):
            cells[index] = 1
        wait_until(lambda: 2 in cells[:64])  # leave chunks for the helper, however late it starts

    task = Task.over_range("share", 0, 64, caller_chunk, helpers=HelperKind.PROCESS,
                           process_chunk_factory=factory, min_chunk=4)
    report = two_node_engine(2).run(task)
    assert report.threads == 2
    assert set(cells[:64]) == {1, 2}
    assert report.chunks_per_worker.get("helper-1", 0) == cells[:64].count(2) // report.plan.chunk_size

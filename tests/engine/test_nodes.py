"""NUMA parts: helpers of a node run on its CPUs; a node at its limit lends its work to any node."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from vfiotask.engine import CpuFacts, Engine, Part, SlotPool, Task
from vfiotask.engine.plan import helper_cap
from vfiotask.engine.slots import SlotLease

from .conftest import FixedFacts, wait_until

CALLER_CPUS = frozenset(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(not {0, 1} <= CALLER_CPUS, reason="needs CPUs 0 and 1 in this process's affinity")

ONE_CPU_NODES = CpuFacts(
    allowed=frozenset({0, 1}), online=frozenset({0, 1}), nodes={0: frozenset({0}), 1: frozenset({1})}
)


def record_affinity() -> tuple[dict[str, set[frozenset[int]]], object]:
    seen: dict[str, set[frozenset[int]]] = {}
    lock = threading.Lock()

    def chunk(start: int, end: int) -> None:
        who = "caller" if threading.current_thread() is threading.main_thread() else "helper"
        with lock:
            seen.setdefault(who, set()).add(frozenset(os.sched_getaffinity(0)))
        other = "helper" if who == "caller" else "caller"
        wait_until(lambda: other in seen)  # each leaves chunks to the other, however late it starts

    return seen, chunk


@needs_two_cpus
def test_a_nodes_helper_runs_on_that_nodes_cpus(state_dir: Path) -> None:
    seen, chunk = record_affinity()
    task = Task("node1", chunk, [Part(0, 64, node=1)], min_chunk=1)  # type: ignore[arg-type]
    report = Engine(FixedFacts(ONE_CPU_NODES)).run(task)
    assert report.helper_nodes == (1,)
    assert seen["helper"] == {frozenset({1})}
    assert seen["caller"] == {CALLER_CPUS}  # the caller's own affinity is never changed


@needs_two_cpus
def test_a_node_at_its_limit_lends_its_work_to_any_node(state_dir: Path) -> None:
    pool = SlotPool()
    held = SlotLease()
    assert pool.take("node1", helper_cap(1, 0.8), 1, held) == 1  # someone else uses node 1's only slot
    try:
        seen, chunk = record_affinity()
        done: list[int] = []

        def counting(start: int, end: int) -> None:
            chunk(start, end)  # type: ignore[operator]
            done.append(end - start)

        task = Task("node1", counting, [Part(0, 64, node=1)], min_chunk=1)
        report = Engine(FixedFacts(ONE_CPU_NODES)).run(task)
    finally:
        held.release()
    assert report.threads == 2 and report.helper_nodes == (None,)
    assert seen["helper"] == {ONE_CPU_NODES.allowed}  # any node's CPUs, but only those the facts allow
    assert sum(done) == 64


def test_helpers_are_shared_among_nodes_by_their_work_within_node_caps() -> None:
    """Eight CPUs on two nodes, three quarters of the work on node 0: six helpers (80% of 8),
    node 0 may take three (80% of 4), so its fourth and the spare one run anywhere."""
    eight = frozenset(range(8))
    facts = CpuFacts(allowed=eight, online=eight, nodes={0: frozenset(range(4)), 1: frozenset(range(4, 8))})
    parts = [Part(0, 3000, node=0), Part(3000, 1000, node=1)]
    covered = bytearray(4000)

    def chunk(start: int, end: int) -> None:
        for index in range(start, end):
            covered[index] += 1

    report = Engine(FixedFacts(facts), slots=SlotPool(shared=False)).run(Task("nodes", chunk, parts, min_chunk=1))
    assert report.threads == 7
    assert sorted(report.helper_nodes, key=lambda n: (n is None, n)) == [0, 0, 0, 1, None, None]
    assert set(covered) == {1}


def test_parts_on_unknown_nodes_run_anywhere() -> None:
    facts = CpuFacts(allowed=frozenset({0, 1}), online=frozenset({0, 1}), nodes={0: frozenset({0, 1})})
    report = Engine(FixedFacts(facts), slots=SlotPool(shared=False)).run(
        Task("n", lambda s, e: None, [Part(0, 100, node=5)], min_chunk=1))
    assert report.helper_nodes == (None,)

"""The plan (threads, chunk size, chunks and what limited them) and its parts, from facts alone."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vfiotask.engine import CpuFacts, CpuPolicy, Part, Plan, Task, chunk_size_for, cpu_budget, plan
from vfiotask.engine.plan import count_chunks, distribute, helper_cap

EIGHT = frozenset(range(8))
MiB = 1 << 20


def budget(**kwargs: object) -> tuple[int, str]:
    facts = CpuFacts(allowed=kwargs.pop("allowed", EIGHT), online=EIGHT, **kwargs)  # type: ignore[arg-type]
    result = cpu_budget(facts, CpuPolicy())
    return result.count, result.limited_by


def task(size: int, *, min_chunk: int = 128 * MiB, align: int = 1, max_threads: int = 0,
         parts: list[Part] | None = None) -> Task:
    return Task("t", chunk=lambda start, end: None, parts=parts or [Part(0, size)], min_chunk=min_chunk,
                align=align, max_threads=max_threads)


def planned(work: Task, *, slots: int = 64, cap: int = 0, **facts: object) -> Plan:
    host = CpuFacts(allowed=facts.pop("allowed", EIGHT), online=EIGHT, **facts)  # type: ignore[arg-type]
    return plan(work, host, CpuPolicy(), default_cap=cap, helper_slots=slots)


def test_affinity_alone() -> None:
    assert budget() == (8, "cpus")
    assert budget(allowed=frozenset({2, 3, 4})) == (3, "cpus")


def test_quota_caps_at_whole_cpus_and_never_below_one() -> None:
    assert budget(quota=2.5) == (2, "cgroup cpu quota")
    assert budget(quota=0.3) == (1, "cgroup cpu quota")
    assert budget(quota=16.0) == (8, "cpus")


def test_busy_cpus_are_not_counted() -> None:
    assert budget(busy={1: 0.95, 3: 0.9, 5: 0.5}) == (6, "busy cpus")
    assert budget(busy=dict.fromkeys(EIGHT, 1.0)) == (1, "busy cpus")


@pytest.mark.parametrize(("governor", "expected"), [("powersave", 1), ("conservative", 1), ("performance", 8),
                                                    ("schedutil", 8), ("ondemand", 8)])
def test_power_saving_governors_mean_one_thread(governor: str, expected: int) -> None:
    assert budget(governors=dict.fromkeys(EIGHT, governor))[0] == expected


def test_the_governor_rule_is_configurable() -> None:
    facts = CpuFacts(allowed=EIGHT, online=EIGHT, governors=dict.fromkeys(EIGHT, "powersave"))
    assert cpu_budget(facts, CpuPolicy(serial_governors=frozenset())).count == 8
    assert cpu_budget(facts, CpuPolicy(serial_governors=frozenset({"performance"}))).count == 8


def test_the_plan_names_the_limit_that_set_the_threads() -> None:
    gib2 = 2 << 30

    def why(work: Task, **kwargs: object) -> tuple[int, str]:
        result = planned(work, **kwargs)  # type: ignore[arg-type]
        return result.threads, result.limited_by

    assert planned(task(gib2)) == Plan(8, 128 * MiB, 16, "cpus", 8, EIGHT)
    assert why(task(300 * MiB)) == (3, "size")
    assert why(task(gib2, max_threads=2)) == (2, "max_threads")
    assert why(task(gib2), cap=4) == (4, "max_threads")
    assert why(task(gib2, max_threads=6), cap=4) == (6, "max_threads")  # the task's own cap wins over the default
    assert why(task(gib2), quota=2.5) == (2, "cgroup cpu quota")
    assert why(task(gib2), busy={0: 1.0, 1: 1.0}) == (6, "busy cpus")
    assert why(task(gib2), governors=dict.fromkeys(EIGHT, "powersave")) == (1, "cpufreq governor powersave")
    assert why(task(gib2), slots=2) == (3, "helper slots")
    assert why(task(gib2), slots=0) == (1, "helper slots")


def test_a_tie_is_reported_as_the_cpus_not_the_slots() -> None:
    """Two CPUs allow one helper slot: the CPUs are the reason the task has two threads."""
    two = frozenset({0, 1})
    result = plan(task(1 << 30), CpuFacts(allowed=two, online=two), CpuPolicy(), helper_slots=helper_cap(2, 0.8))
    assert (result.threads, result.limited_by) == (2, "cpus")


def test_never_more_threads_than_chunks() -> None:
    """Three 4 KiB parts cut in 2 MiB-aligned chunks are three chunks, however many CPUs there are."""
    parts = [Part(0, 4096), Part(1 << 30, 4096), Part(2 << 30, 4096)]
    result = planned(task(3 * 4096, min_chunk=1, align=2 * MiB, parts=parts))
    assert (result.threads, result.chunks, result.limited_by) == (3, 3, "chunks")


def test_the_chunk_count_is_the_chunks_of_the_chunk_size() -> None:
    result = planned(task(1 << 30, min_chunk=4 * MiB, align=4096))
    assert result.chunks == count_chunks([Part(0, 1 << 30)], result.chunk_size)
    assert (result.threads, result.chunk_size, result.chunks) == (8, 32 * MiB, 32)


def test_the_plan_reads_as_json() -> None:
    assert planned(task(300 * MiB)).to_dict() == {
        "threads": 3, "chunk_size": 128 * MiB, "chunks": 3, "limited_by": "size", "cpus_usable": 8}


@given(size=st.integers(1, 1 << 40), min_chunk=st.integers(1, 1 << 28), align=st.sampled_from([1, 4096, 2 << 20]),
       max_threads=st.integers(0, 16), slots=st.integers(0, 16), cpus=st.integers(1, 8))
def test_every_plan_keeps_every_limit(size: int, min_chunk: int, align: int, max_threads: int, slots: int,
                                      cpus: int) -> None:
    allowed = frozenset(range(cpus))
    result = plan(task(size, min_chunk=min_chunk, align=align, max_threads=max_threads),
                  CpuFacts(allowed=allowed, online=EIGHT), CpuPolicy(), helper_slots=slots)
    assert 1 <= result.threads <= min(cpus, slots + 1, max_threads or cpus, result.chunks)
    assert result.chunk_size == chunk_size_for(size, result.threads, min_chunk, align) or result.limited_by == "chunks"
    assert result.chunks == count_chunks([Part(0, size)], result.chunk_size)


def test_helper_caps_are_eighty_percent_and_at_least_one() -> None:
    assert [helper_cap(n, 0.8) for n in (1, 2, 4, 8, 96)] == [1, 1, 3, 6, 76]


def test_helpers_follow_the_work_and_spill_past_a_nodes_capacity() -> None:
    assert distribute(4, {0: 100, 1: 100}, {0: 4, 1: 4}) == {0: 2, 1: 2}
    assert distribute(4, {0: 300, 1: 100}, {0: 4, 1: 4}) == {0: 3, 1: 1}
    assert distribute(4, {0: 300, 1: 100}, {0: 1, 1: 4}) == {0: 1, 1: 1, None: 2}
    assert distribute(3, {None: 50, 0: 50}, {0: 8}) == {None: 1, 0: 2}  # a tie goes to the node
    assert distribute(0, {0: 1}, {0: 1}) == {0: 0}


@given(helpers=st.integers(0, 64), weights=st.dictionaries(st.one_of(st.none(), st.integers(0, 3)),
                                                           st.integers(0, 1000), min_size=1),
       room=st.integers(0, 8))
def test_distribute_hands_out_exactly_the_helpers(helpers: int, weights: dict[int | None, int], room: int) -> None:
    shares = distribute(helpers, weights, dict.fromkeys(range(4), room))
    if sum(weights.values()) > 0:
        assert sum(shares.values()) == helpers
    assert all(shares.get(node, 0) <= room for node in range(4))


@given(size=st.integers(1, 1 << 40), threads=st.integers(1, 64), min_chunk=st.integers(1, 1 << 28),
       align=st.sampled_from([1, 4096, 2 << 20, 1 << 30]))
@example(size=32776, threads=2, min_chunk=4097, align=4096)  # the floor is min_chunk rounded up to align: 8192
def test_chunk_size_is_aligned_never_below_min_chunk_and_about_a_quarter_share(
    size: int, threads: int, min_chunk: int, align: int
) -> None:
    chunk = chunk_size_for(size, threads, min_chunk, align)
    assert chunk % align == 0
    assert chunk >= min_chunk
    share = size // (threads * 4)
    floor = -(-min_chunk // align) * align  # the smallest aligned chunk that is at least min_chunk
    if share >= floor:
        assert share - align < chunk <= share
    else:
        assert chunk == floor

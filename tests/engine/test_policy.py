"""The thread-count policy and the chunking rule, from facts alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfiotask.engine import CpuFacts, CpuPolicy, chunk_size_for, cpu_budget
from vfiotask.engine.policy import distribute, helper_cap, wanted_threads

EIGHT = frozenset(range(8))


def budget(**kwargs: object) -> tuple[int, str]:
    facts = CpuFacts(allowed=kwargs.pop("allowed", EIGHT), online=EIGHT, **kwargs)  # type: ignore[arg-type]
    result = cpu_budget(facts, CpuPolicy())
    return result.count, result.limited_by


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


def test_threads_are_the_least_of_size_cpus_and_max_threads() -> None:
    cpus = cpu_budget(CpuFacts(allowed=EIGHT, online=EIGHT), CpuPolicy())
    assert wanted_threads(2 << 30, 128 << 20, 0, cpus) == (8, "cpus")
    assert wanted_threads(300 << 20, 128 << 20, 0, cpus) == (3, "size")
    assert wanted_threads(1 << 30, 128 << 20, 2, cpus) == (2, "max_threads")
    assert wanted_threads(1 << 30, 128 << 20, 0, cpus, default_cap=4) == (4, "max_threads")


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
def test_chunk_size_is_aligned_never_below_min_chunk_and_about_a_quarter_share(
    size: int, threads: int, min_chunk: int, align: int
) -> None:
    chunk = chunk_size_for(size, threads, min_chunk, align)
    assert chunk % align == 0
    assert chunk >= min_chunk
    if size // (threads * 4) >= max(min_chunk, align):
        assert size // (threads * 4) - align < chunk <= size // (threads * 4)

"""CPU facts from fixture trees, and the thread count the engine then chooses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vfiotask.engine import CpuPolicy, Engine, SlotPool, Task
from vfiotask.host.cpus import (
    BusySampler,
    HostCpuFacts,
    OwnUsage,
    caller_affinity,
    host_engine,
    online_cpus,
    parse_proc_stat,
)

TREES = Path(__file__).resolve().parents[2] / "fixtures" / "host"


def quiet(root: Path) -> BusySampler:
    """A fixture tree's /proc/stat read twice: nothing busy."""
    return BusySampler(root, interval=0)


def threads_for(root: Path, sampler: BusySampler | None = None, policy: CpuPolicy | None = None) -> int:
    """The thread count a large task gets on this tree (slots private to the test)."""
    engine = Engine(HostCpuFacts(root, sampler=sampler or quiet(root)), policy=policy, slots=SlotPool(shared=False))
    report = engine.run(Task.over_range("policy", 0, 1 << 20, lambda s, e: None, min_chunk=4096))
    return report.threads


@pytest.mark.parametrize(
    ("tree", "threads"),
    [
        ("vm-hybrid", 2),
        ("affinity", 3),
        ("quota-v1", 2),
        ("quota-v2", 3),
        ("quota-hybrid", 1),
        ("quota-container", 2),
        ("governor-powersave", 1),
        ("governor-conservative", 1),
        ("governor-performance", 4),
        ("governor-schedutil", 4),
        ("two-node", 7),  # 8 CPUs, but helpers are capped at 80% of them: 6 + the caller
        ("hotplug", 3),
    ],
)
def test_thread_count_per_tree(tree: str, threads: int) -> None:
    assert threads_for(TREES / tree) == threads


def test_busy_cpus_are_left_out() -> None:
    root = TREES / "busy"
    sampler = BusySampler(root, interval=0, stat_files=[root / "proc/stat", root / "proc/stat.later"])
    facts = HostCpuFacts(root, sampler=sampler).read()
    assert {cpu: round(f, 2) for cpu, f in facts.busy.items()} == {0: 0.05, 1: 0.95, 2: 0.05, 3: 0.95}
    sampler = BusySampler(root, interval=0, stat_files=[root / "proc/stat", root / "proc/stat.later"])
    assert threads_for(root, sampler) == 2


def test_a_governor_rule_can_be_turned_off() -> None:
    assert threads_for(TREES / "governor-powersave", policy=CpuPolicy(serial_governors=frozenset())) == 4


def test_facts_of_the_two_node_tree() -> None:
    facts = HostCpuFacts(TREES / "two-node", sampler=quiet(TREES / "two-node")).read()
    assert facts.nodes == {0: frozenset(range(4)), 1: frozenset(range(4, 8))}
    assert facts.allowed == facts.online == frozenset(range(8))
    assert facts.quota is None and facts.governors == {}


def test_offline_cpus_are_not_allowed_even_if_the_mask_names_them() -> None:
    facts = HostCpuFacts(TREES / "hotplug", sampler=quiet(TREES / "hotplug")).read()
    assert caller_affinity(TREES / "hotplug") == frozenset({0, 1, 2, 3})
    assert facts.allowed == frozenset({0, 1, 3})


def test_facts_are_read_again_for_every_task(tmp_path: Path) -> None:
    """CPU hotplug between two tasks of one engine changes the second task's threads."""
    root = tmp_path / "host"
    shutil.copytree(TREES / "hotplug", root)
    engine = Engine(HostCpuFacts(root, sampler=quiet(root)), slots=SlotPool(shared=False))
    task = Task.over_range("hotplug", 0, 1 << 20, lambda s, e: None, min_chunk=4096)
    assert engine.run(task).threads == 3
    (root / "sys/devices/system/cpu/online").write_text("0-3\n")
    assert engine.run(task).threads == 4


def test_proc_stat_keeps_cpu_numbers_and_counts_iowait_as_idle() -> None:
    text = "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 10 0 10 100 5 0 0 0 0 0\ncpu3 1 0 1 8 0 0 0 2 0 0\nintr 1\n"
    times = parse_proc_stat(text)
    assert set(times) == {0, 3}
    assert (times[0].busy, times[0].total) == (20, 125)
    assert (times[3].busy, times[3].total) == (4, 12)  # steal counts as busy


def test_the_real_host() -> None:
    facts = HostCpuFacts().read()
    assert facts.allowed == frozenset(os.sched_getaffinity(0)) & online_cpus()
    assert set(facts.busy) <= facts.allowed
    assert all(0.0 <= value <= 1.0 for value in facts.busy.values())


def test_our_own_load_is_not_counted_as_competition() -> None:
    """Two snapshots of a host where CPUs 1 and 3 were 95% busy; 0.4 s of it was a living thread
    of ours on CPU 1, and 0.3 s threads of ours that ended meanwhile (taken off the busiest CPU).
    Fixed numbers in, fixed fractions out: no real CPU has to be idle or busy for this."""
    root = TREES / "busy"
    usage = iter([OwnUsage(0.0, {10: (0, 1)}), OwnUsage(0.7, {10: (40, 1)})])
    sampler = BusySampler(root, interval=0, stat_files=[root / "proc/stat", root / "proc/stat.later"],
                          own=lambda: next(usage), ticks_per_second=100)
    busy = sampler.sample({0, 1, 2, 3})
    assert {cpu: round(f, 2) for cpu, f in busy.items()} == {0: 0.05, 1: 0.55, 2: 0.05, 3: 0.65}


def test_host_engine_plans_with_host_facts() -> None:
    engine = host_engine(slots=SlotPool(shared=False))
    assert isinstance(engine.facts, HostCpuFacts)
    report = engine.run(Task.over_range("host", 0, 1 << 20, lambda s, e: None, min_chunk=4096))
    assert 1 <= report.threads <= len(os.sched_getaffinity(0))

"""The plan of a task: how many threads, what chunk size, and which limit set the thread count.

One pure function, `plan`, holds the whole policy, as `padata_do_multithreaded` does in the
kernel: threads = min(ceil(size / min_chunk), usable CPUs, max_threads, helper slots + 1), then
about four chunks per thread, and never more threads than chunks.  It is ktask's rule with the
parts its RFC planned but never built: usable CPUs are the caller's affinity (its cpuset),
without CPUs that other work keeps busy (a helper there competes rather than helps), capped by
the cgroup CPU quota (threads beyond it only get throttled), and one under a power-saving
cpufreq governor (the administrator chose energy over speed).  Facts in, numbers out: it is
tested without a host, and the engine calls it again with the slots it was granted, so there is
one place that decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vfiotask.engine.facts import CpuFacts
from vfiotask.engine.priority import LOWEST

if TYPE_CHECKING:  # the task module reports a Plan; the plan only reads a task's fields
    from vfiotask.engine.task import Part, Task

SERIAL_GOVERNORS = frozenset({"powersave", "conservative"})
CHUNKS_PER_THREAD = 4
"""Few enough that claiming costs nothing next to the work, enough that a thread slowed by a
neighbour does not hold up the end (padata's load_balance_factor)."""


@dataclass(frozen=True)
class CpuPolicy:
    """Tunables of the thread-count policy.

    `busy_threshold`: a CPU busier than this fraction (with other work) is not counted.
    `serial_governors`: cpufreq governors under which a task runs in the caller alone (empty to
    ignore governors).  `helper_fraction`: the host-wide and per-node caps on helpers, as a
    fraction of the CPUs (ktask used 80%); at least one helper is always allowed.
    `helper_nice`: the priority helpers start at (ktask's 19, the lowest, so that preparing a
    guest yields to the host's other work; 0 makes them equal to a normal-priority caller, which
    on a small host with busy kernel workers finishes sooner).
    """

    busy_threshold: float = 0.75
    serial_governors: frozenset[str] = field(default=SERIAL_GOVERNORS)
    helper_fraction: float = 0.8
    helper_nice: int = LOWEST


@dataclass(frozen=True)
class Plan:
    """What the engine will do with a task, and why no more threads.

    `limited_by`: size, cpus, busy cpus, cgroup cpu quota, cpufreq governor NAME, max_threads,
    helper slots or chunks.  `cpus`: the CPUs helpers may run on; `cpus_usable`: how many of
    them the policy counts (a quota or a governor counts fewer than there are).
    """

    threads: int
    chunk_size: int
    chunks: int
    limited_by: str
    cpus_usable: int = 0
    cpus: frozenset[int] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """For JSON reports: snake_case keys, numbers and the reason."""
        return {"threads": self.threads, "chunk_size": self.chunk_size, "chunks": self.chunks,
                "limited_by": self.limited_by, "cpus_usable": self.cpus_usable}


def plan(task: Task, facts: CpuFacts, policy: CpuPolicy, *, default_cap: int = 0, helper_slots: int) -> Plan:
    """The threads and chunks for `task` on the CPUs `facts` describe, with `helper_slots` helpers
    at most.  `task.max_threads` 0 means `default_cap`; a cap of 0 means none beyond the CPUs."""
    budget = cpu_budget(facts, policy)
    limits = [
        (math.ceil(task.size / task.min_chunk), "size"),
        (budget.count, budget.limited_by),
        (task.max_threads or default_cap, "max_threads"),
        (helper_slots + 1, "helper slots"),
    ]
    threads, limited_by = min(((n, why) for n, why in limits if n > 0), key=lambda limit: limit[0])
    chunk = chunk_size_for(task.size, threads, task.min_chunk, task.align, task.chunks_per_thread)
    chunks = count_chunks(task.parts, chunk)
    if chunks < threads:
        threads, limited_by = chunks, "chunks"
    return Plan(threads, chunk, chunks, limited_by, budget.count, budget.cpus)


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs a task may use now, and what limited them."""

    count: int
    cpus: frozenset[int]
    limited_by: str


def cpu_budget(facts: CpuFacts, policy: CpuPolicy) -> CpuBudget:
    """Usable CPUs from facts: affinity, minus busy CPUs, capped by quota, 1 under a power governor."""
    allowed = facts.allowed or facts.online
    idle = frozenset(cpu for cpu in allowed if facts.busy.get(cpu, 0.0) <= policy.busy_threshold)
    count, reason = len(allowed), "cpus"
    if len(idle) < count:
        count, reason = len(idle), "busy cpus"
    if facts.quota is not None and math.floor(facts.quota + 1e-9) < count:
        count, reason = math.floor(facts.quota + 1e-9), "cgroup cpu quota"
    serial = sorted({facts.governors[cpu] for cpu in allowed if facts.governors.get(cpu) in policy.serial_governors})
    if serial and count > 1:
        count, reason = 1, f"cpufreq governor {serial[0]}"
    return CpuBudget(count=max(1, count), cpus=idle or allowed, limited_by=reason)


def chunk_size_for(size: int, threads: int, min_chunk: int, align: int, per_thread: int = CHUNKS_PER_THREAD) -> int:
    """About `per_thread` chunks per thread (a task may ask for more than `CHUNKS_PER_THREAD`),
    a multiple of align, never below min_chunk."""
    target = size // (threads * per_thread) if threads > 0 else size
    step = max(align, 1)
    chunk = max(target - target % step, min_chunk)
    chunk = -(-chunk // step) * step
    return max(chunk, step)


def count_chunks(parts: Sequence[Part], chunk: int) -> int:
    """Chunks of `chunk` units, counted from each part's start (a part's last chunk may be short)."""
    return sum(-(-part.size // chunk) for part in parts if part.size > 0)


def helper_cap(cpus: int, fraction: float) -> int:
    """Helpers allowed on `cpus` CPUs at once, across every process on the host: at least one."""
    return max(1, math.floor(cpus * fraction + 1e-9))


def distribute(
    helpers: int, weights: Mapping[int | None, int], capacity: Mapping[int, int]
) -> dict[int | None, int]:
    """Share `helpers` among nodes in proportion to their work (largest remainder).

    A node gets at most `capacity[node]` helpers (its usable CPUs, its free slots); what it
    cannot take goes to `None`, helpers that run anywhere: a node at its limit lends its work.
    """
    total = sum(weight for weight in weights.values() if weight > 0)
    shares: dict[int | None, int] = {key: 0 for key in weights}
    if helpers <= 0 or total <= 0:
        return shares
    exact = {key: helpers * weight / total for key, weight in weights.items() if weight > 0}
    for key, value in exact.items():
        shares[key] = math.floor(value)
    left = helpers - sum(shares.values())
    order = sorted(exact, key=lambda key: (-(exact[key] - math.floor(exact[key])), key is None, key or 0))
    for key in order[:left]:
        shares[key] += 1
    spill = 0
    for key in list(shares):
        if key is None:
            continue
        room = capacity.get(key, 0)
        if shares[key] > room:
            spill += shares[key] - room
            shares[key] = room
    if spill:
        shares[None] = shares.get(None, 0) + spill
    return shares

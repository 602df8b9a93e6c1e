"""How many threads a task gets, and on which nodes its helpers run.

ktask's rule, with the parts its RFC planned but never built: threads = min(chunks worth a
thread, usable CPUs, max_threads, free helper slots + the caller).  Usable CPUs are the caller's
affinity (its cpuset), capped by the cgroup CPU quota (threads beyond the quota only get
throttled), without CPUs that other work keeps busy (a helper there competes rather than helps),
and one under a power-saving cpufreq governor (the administrator chose energy over speed).
Everything here is pure: facts in, numbers out, so it is tested without a host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from vfiotask.engine.facts import CpuFacts
from vfiotask.engine.priority import LOWEST

SERIAL_GOVERNORS = frozenset({"powersave", "conservative"})


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
class CpuBudget:
    """The CPUs a task may use now, and what limited them (for the report)."""

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


def wanted_threads(
    size: int, min_chunk: int, max_threads: int, budget: CpuBudget, default_cap: int = 0
) -> tuple[int, str]:
    """threads = min(ceil(size / min_chunk), usable CPUs, max_threads); `max_threads` 0 = `default_cap`.

    Returns the count and what set it; a cap of 0 means no cap beyond the CPUs.
    """
    cap = max_threads or default_cap
    limits = [(math.ceil(size / max(min_chunk, 1)), "size"), (budget.count, budget.limited_by)]
    if cap > 0:
        limits.append((cap, "max_threads"))
    count, reason = min(limits, key=lambda item: item[0])
    return max(1, count), reason


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

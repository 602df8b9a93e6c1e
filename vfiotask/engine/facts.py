"""What the engine needs to know about the host's CPUs, and where it gets it.

The engine sits below the host readers, so it cannot read /sys or cgroups itself.  It states
what it needs as `CpuFacts` and takes a `CpuFactsSource`; `vfiotask.host.cpus.HostCpuFacts`
is the real one.  Without a source the engine falls back to the caller's affinity, which is
always right and never complete (no quota, no busy CPUs, no nodes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CpuFacts:
    """A snapshot of the CPUs a task may use, taken right before it runs (CPUs come and go).

    `allowed`: the caller's affinity (its cpuset) among online CPUs, less those others own (isolated,
    nohz_full, running guests' pinned vCPUs); helpers run only there.  `online`: every online CPU,
    which sizes the host-wide helper caps.  `quota`: the cgroup CPU quota in CPUs (1.5 = 150 ms
    per 100 ms), None when unlimited.  `busy`: per CPU, the fraction of a recent window spent on
    work other than this process's own.  `governors`: per CPU, the cpufreq governor (empty when
    the host has no cpufreq).  `nodes`: per NUMA node, its online CPUs.
    """

    allowed: frozenset[int]
    online: frozenset[int] = frozenset()
    quota: float | None = None
    busy: Mapping[int, float] = field(default_factory=dict)
    governors: Mapping[int, str] = field(default_factory=dict)
    nodes: Mapping[int, frozenset[int]] = field(default_factory=dict)

    @property
    def online_count(self) -> int:
        return len(self.online or self.allowed)


@runtime_checkable
class CpuFactsSource(Protocol):
    """Anything that can say, now, what `CpuFacts` hold; read once per task."""

    def read(self) -> CpuFacts: ...


class AffinityFacts:
    """The fallback source: the calling thread's affinity and nothing else."""

    def read(self) -> CpuFacts:
        allowed = frozenset(os.sched_getaffinity(0))
        return CpuFacts(allowed=allowed, online=allowed)

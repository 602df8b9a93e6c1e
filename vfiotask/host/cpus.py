"""The CPU facts the engine plans with, read from a host tree: `HostCpuFacts` and `host_engine`.

Everything is read under `root` so that tests point it at a fixture tree (`fixtures/host/...`):
online CPUs and nodes from sysfs, the caller's affinity (the real thread's on `/`, the fixture's
`Cpus_allowed_list` elsewhere), the cgroup CPU quota, cpufreq governors, and how busy each CPU
is.  It is read again for every task, because CPUs go on- and offline and cgroup limits change
while a host runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vfiotask.engine import CpuFacts, Engine
from vfiotask.host.cgroups import cpu_quota
from vfiotask.host.cpulist import parse_cpu_list
from vfiotask.host.cpuowners import cpu_owners
from vfiotask.host.numa import node_cpus, online_ids

log = logging.getLogger(__name__)

CPU_ROOT = "sys/devices/system/cpu"
PROC_STAT = "proc/stat"
PROC_LOADAVG = "proc/loadavg"
SELF_STATUS = "proc/self/status"
REAL_ROOT = Path("/")


def online_cpus(root: Path = REAL_ROOT) -> frozenset[int]:
    """Online CPUs (`cpu/online`); where the file is missing, every `cpuN` directory."""
    return online_ids(root / CPU_ROOT, "cpu")


def caller_affinity(root: Path = REAL_ROOT) -> frozenset[int]:
    """The calling thread's CPUs on the real host; a fixture tree's `Cpus_allowed_list` elsewhere."""
    if root == REAL_ROOT:
        return frozenset(os.sched_getaffinity(0))
    for line in (root / SELF_STATUS).read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpu_list(line.split(":", 1)[1])
    return online_cpus(root)


def governors(cpus: Iterable[int], root: Path = REAL_ROOT) -> dict[int, str]:
    """The cpufreq governor of each CPU that has one (a VM or a kernel without cpufreq has none)."""
    found: dict[int, str] = {}
    for cpu in cpus:
        try:
            found[cpu] = (root / CPU_ROOT / f"cpu{cpu}/cpufreq/scaling_governor").read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative busy and total time of one CPU, in clock ticks, from `/proc/stat`."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[int, CpuTimes]:
    """Per-CPU times from `/proc/stat` by CPU number (psutil's per-CPU list loses the numbers
    when a CPU is offline).  Idle is idle + iowait; steal counts as busy: the host took it."""
    found: dict[int, CpuTimes] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        values = [int(v) for v in rest.split()[:8]]
        values += [0] * (8 - len(values))
        total = sum(values)
        found[int(name[3:])] = CpuTimes(busy=total - values[3] - values[4], total=total)
    return found


def own_cpu_seconds() -> float:
    """CPU time this process has used: every thread, living or ended, and its reaped children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass(frozen=True)
class OwnUsage:
    """This process's CPU time: in total (seconds) and per living thread (ticks, last CPU)."""

    seconds: float
    threads: dict[int, tuple[int, int]]


def own_usage() -> OwnUsage:
    """The process total and, per thread, its CPU ticks and the CPU it last ran on.

    The per-thread part lets the sampler take our own load off the CPU it was on, instead of
    guessing; what ended threads used is only in the total and is taken off the busiest CPUs.
    """
    threads: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        threads[int(entry.name)] = (int(fields[11]) + int(fields[12]), int(fields[36]))
    return OwnUsage(own_cpu_seconds(), threads)


def no_usage() -> OwnUsage:
    """For a fixture tree: no process of ours runs on its CPUs."""
    return OwnUsage(0.0, {})


@dataclass(frozen=True)
class _Snapshot:
    when: float
    cpus: dict[int, CpuTimes]
    own: OwnUsage


class BusySampler:
    """How busy each CPU is with work other than this process's, at a cost a task can afford.

    A fresh sample waits `interval` seconds; a later task reuses the window since the previous
    sample when that is between `min_window` and `max_age` old, and the last answer when it is
    younger still.  What this process itself used in the window (its previous task's helpers,
    say) is taken off the busiest CPUs, so a task that follows another does not mistake its
    predecessor for a competitor.  `stat_files` are read in turn (the last repeats): a fixture
    gives two snapshots; the real host gives `/proc/stat`.

    A fresh sample is skipped when `/proc/loadavg` says nothing but the caller is runnable right
    now: no CPU can be busy with other work then, and the 20 ms wait was a tenth of a 4 GiB
    hugetlbfs prefault.
    """

    def __init__(
        self,
        root: Path = REAL_ROOT,
        *,
        interval: float = 0.02,
        min_window: float = 0.05,
        max_age: float = 2.0,
        stat_files: Sequence[Path] | None = None,
        own: Callable[[], OwnUsage] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ticks_per_second: int | None = None,
    ) -> None:
        self.files = list(stat_files or [root / PROC_STAT])
        self.loadavg = None if stat_files else root / PROC_LOADAVG
        self.interval = interval
        self.min_window = min_window
        self.max_age = max_age
        self.own = own or (own_usage if root == REAL_ROOT else no_usage)
        self.clock = clock
        self.hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
        self._reads = 0
        self._lock = threading.Lock()  # tasks in several threads share one sampler
        self._last: _Snapshot | None = None
        self._answer: dict[int, float] | None = None

    def _snapshot(self) -> _Snapshot:
        path = self.files[min(self._reads, len(self.files) - 1)]
        self._reads += 1
        return _Snapshot(self.clock(), parse_proc_stat(path.read_text()), self.own())

    def sample(self, cpus: Iterable[int]) -> dict[int, float]:
        """Per CPU in `cpus`, the fraction of the window it spent busy with others' work."""
        with self._lock:
            return self._sample(frozenset(cpus))

    def _sample(self, cpus: frozenset[int]) -> dict[int, float]:
        now = self._snapshot()
        before = self._last
        if before is not None and now.when - before.when < self.min_window and self._answer is not None:
            return self._answer
        if before is None or now.when - before.when > self.max_age:
            if self._only_caller_runs():
                self._last = now
                self._answer = dict.fromkeys(cpus, 0.0)
                return self._answer
            if self.interval > 0:
                time.sleep(self.interval)
            before, now = now, self._snapshot()
        self._last = now
        self._answer = _busy_fractions(before, now, cpus, self.hz)
        return self._answer


    def _only_caller_runs(self) -> bool:
        """`/proc/loadavg`'s runnable count (the 4th field, `running/total`) is 1: only the reader."""
        if self.loadavg is None:
            return False
        try:
            running = self.loadavg.read_text().split()[3].partition("/")[0]
        except (OSError, IndexError):
            return False
        return running == "1"


def _busy_fractions(before: _Snapshot, now: _Snapshot, cpus: frozenset[int], hz: int) -> dict[int, float]:
    fractions: dict[int, float] = {}
    windows: dict[int, int] = {}
    for cpu in cpus:
        old, new = before.cpus.get(cpu), now.cpus.get(cpu)
        if old is None or new is None or new.total <= old.total:
            continue
        windows[cpu] = new.total - old.total
        fractions[cpu] = (new.busy - old.busy) / windows[cpu]
    if not windows:
        return fractions
    # This process's own work is not competition: take each living thread's ticks off the CPU
    # it ran on, and what is left (threads that ended) off the busiest CPUs.
    attributed = 0.0
    for tid, (ticks, cpu) in now.own.threads.items():
        old_ticks = before.own.threads.get(tid, (ticks, cpu))[0]
        used = max(0, ticks - old_ticks)
        attributed += used / hz
        if cpu in fractions and used:
            fractions[cpu] = max(0.0, fractions[cpu] - used / windows[cpu])
    window_seconds = sum(windows.values()) / len(windows) / hz
    rest = max(0.0, now.own.seconds - before.own.seconds - attributed) / window_seconds
    for cpu in sorted(fractions, key=lambda c: -fractions[c]):
        if rest <= 0:
            break
        taken = min(fractions[cpu], rest)
        fractions[cpu] -= taken
        rest -= taken
    return fractions


class HostCpuFacts:
    """`CpuFactsSource` over a host tree: read() gathers everything the thread policy weighs."""

    def __init__(self, root: Path = REAL_ROOT, *, sampler: BusySampler | None = None) -> None:
        self.root = root
        self.sampler = sampler if sampler is not None else _default_sampler(root)

    def read(self) -> CpuFacts:
        online = online_cpus(self.root)
        allowed = caller_affinity(self.root)
        if online:
            allowed = (allowed & online) or online
        allowed = withhold_owned(allowed, self.root)
        quota = cpu_quota(self.root)
        try:
            busy = self.sampler.sample(allowed)
        except OSError as exc:
            log.debug("cannot tell how busy CPUs are: %s", exc)
            busy = {}
        nodes = {node: cpus & online if online else cpus for node, cpus in node_cpus(self.root).items()}
        return CpuFacts(
            allowed=allowed,
            online=online or allowed,
            quota=quota.cpus if quota else None,
            busy=busy,
            governors=governors(allowed, self.root),
            nodes=nodes,
        )


def withhold_owned(allowed: frozenset[int], root: Path = REAL_ROOT) -> frozenset[int]:
    """`allowed` without isolated, nohz_full and guest-pinned CPUs; unchanged when that leaves
    none (the caller's own affinity then says where it may run, and it is already running there)."""
    owners = cpu_owners(root)
    free = allowed - owners.taken
    if free != allowed:
        log.debug("helpers stay off CPUs %s: %s", sorted(allowed - free), owners.reasons())
    return free or allowed


_SAMPLERS: dict[Path, BusySampler] = {}


def _default_sampler(root: Path) -> BusySampler:
    """One sampler per tree, shared by every engine in the process, so tasks reuse its window."""
    if root not in _SAMPLERS:
        _SAMPLERS[root] = BusySampler(root, interval=0.02 if root == REAL_ROOT else 0.0)
    return _SAMPLERS[root]


def host_engine(root: Path = REAL_ROOT, **kwargs: Any) -> Engine:
    """An engine that plans with this host's CPU facts; the jobs' default engine.

    Keyword arguments go to `Engine` (policy, slots, default_max_threads, defer_signals).
    """
    return Engine(facts=HostCpuFacts(root), **kwargs)

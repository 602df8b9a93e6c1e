"""Readers of /proc/PID files: locked memory, capabilities and limits of a process.

The accountant must start from what the kernel already charges to a process (VmLck + VmPin)
and must know whether the limit applies at all (CAP_IPC_LOCK), so these are read from the same
files the kernel writes.  `proc_root` lets tests hand in a small fake tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CAP_IPC_LOCK = 14
RLIM_INFINITY = -1  # what psutil and resource report for "unlimited"


def _pid_dir(pid: int | None, proc_root: Path) -> Path:
    return proc_root / ("self" if pid is None else str(pid))


def status_fields(pid: int | None = None, *, proc_root: Path = PROC) -> dict[str, str]:
    """/proc/PID/status as a dict of raw values (`'VmLck': '0 kB'`)."""
    fields: dict[str, str] = {}
    for line in (_pid_dir(pid, proc_root) / "status").read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def _bytes(fields: dict[str, str], name: str) -> int:
    """A `kB` field in bytes; 0 when the kernel does not show it."""
    value = fields.get(name)
    if not value:
        return 0
    number, _, unit = value.partition(" ")
    return int(number) * (1024 if unit.strip() == "kB" else 1)


def status_bytes(name: str, pid: int | None = None, *, proc_root: Path = PROC) -> int:
    """A `kB` field of /proc/PID/status in bytes; 0 when the kernel does not show it."""
    return _bytes(status_fields(pid, proc_root=proc_root), name)


@dataclass(frozen=True)
class LockedMemory:
    """What the kernel charges to a process's locked_vm / pinned_vm, in bytes."""

    vm_lck: int
    vm_pin: int

    @property
    def total(self) -> int:
        return self.vm_lck + self.vm_pin


def locked_memory(pid: int | None = None, *, proc_root: Path = PROC) -> LockedMemory:
    fields = status_fields(pid, proc_root=proc_root)
    return LockedMemory(vm_lck=_bytes(fields, "VmLck"), vm_pin=_bytes(fields, "VmPin"))


def effective_capabilities(pid: int | None = None, *, proc_root: Path = PROC) -> int:
    """The CapEff bit mask of a process."""
    return int(status_fields(pid, proc_root=proc_root).get("CapEff", "0"), 16)


def has_capability(capability: int, pid: int | None = None, *, proc_root: Path = PROC) -> bool:
    return bool(effective_capabilities(pid, proc_root=proc_root) >> capability & 1)


def memlock_limit_from_limits(pid: int | None = None, *, proc_root: Path = PROC) -> tuple[int, int]:
    """(soft, hard) RLIMIT_MEMLOCK from /proc/PID/limits; RLIM_INFINITY for `unlimited`."""
    for line in (_pid_dir(pid, proc_root) / "limits").read_text().splitlines():
        if line.startswith("Max locked memory"):
            values = line[len("Max locked memory") :].split()
            soft, hard = (RLIM_INFINITY if v == "unlimited" else int(v) for v in values[:2])
            return soft, hard
    raise ValueError(f"no 'Max locked memory' line in {_pid_dir(pid, proc_root) / 'limits'}")


def pid_dirs(proc_root: Path = PROC) -> list[Path]:
    """Every process's directory under `proc_root`, in pid order; none when it cannot be listed."""
    try:
        names = [name for name in os.listdir(proc_root) if name.isascii() and name.isdigit()]
    except OSError:
        return []
    return [proc_root / name for name in sorted(names, key=int)]


def command(pid_dir: Path) -> str | None:
    """A process's command (`comm`); None when it ended meanwhile or may not be read."""
    try:
        return (pid_dir / "comm").read_text().strip()
    except OSError:
        return None


def pids_named(names: frozenset[str] | set[str], *, proc_root: Path = PROC) -> list[int]:
    """Processes whose command (`comm`) is one of `names`."""
    return [int(entry.name) for entry in pid_dirs(proc_root) if command(entry) in names]


def process_start_time(pid: int, *, proc_root: Path = PROC) -> float:
    """When a process started, in seconds since the epoch: boot time plus its `stat` start ticks."""
    boot = 0
    for line in (proc_root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            boot = int(line.split()[1])
    text = (_pid_dir(pid, proc_root) / "stat").read_text()
    ticks = int(text[text.rindex(")") + 2 :].split()[19])  # field 22, counted after the command
    return boot + ticks / os.sysconf("SC_CLK_TCK")

"""CPUs that belong to someone else: isolated ones, nohz_full ones, and running guests' pinned vCPUs.

An administrator isolates CPUs (isolcpus=, nohz_full=) to keep the kernel's and everyone's work
off them, and pins a guest's vCPUs so that nothing else runs there; preparing one guest must not
steal those CPUs from another.  libvirt puts each running guest's vCPU threads in cgroups named
`vcpuN` under `machine.slice` (systemd) or `machine/` (cgroup v1 without systemd), and a pinned
vCPU's `cpuset.cpus` names fewer CPUs than are online; an unpinned one names them all (v1) or
nothing (v2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfiotask.host.cgroups import cgroup_mounts
from vfiotask.host.cpulist import parse_cpu_list
from vfiotask.host.numa import online_ids

CPU_ROOT = "sys/devices/system/cpu"
MACHINE_DIRS = ("machine.slice", "machine")
VCPU_DIR = re.compile(r"^vcpu\d+$")


def _cpu_file(root: Path, name: str) -> frozenset[int]:
    try:
        return parse_cpu_list((root / CPU_ROOT / name).read_text())
    except (FileNotFoundError, ValueError):
        return frozenset()


def guest_name(directory: str) -> str:
    """`machine-qemu\\x2d3\\x2dwin11.scope` or `win11.libvirt-qemu` -> `3-win11` or `win11`."""
    name = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), directory)
    for prefix in ("machine-qemu-", "machine-"):
        name = name.removeprefix(prefix)
    for suffix in (".scope", ".libvirt-qemu"):
        name = name.removesuffix(suffix)
    return name


def _guest_of(path: Path, top: Path) -> str:
    relative = path.relative_to(top).parts
    return guest_name(relative[0]) if relative else "?"


def pinned_vcpus(root: Path = Path("/")) -> dict[str, frozenset[int]]:
    """Running guest -> the CPUs its pinned vCPUs may run on."""
    online = online_ids(root / CPU_ROOT, "cpu")
    found: dict[str, set[int]] = {}
    try:
        mounts = cgroup_mounts(root)
    except (FileNotFoundError, PermissionError):
        return {}
    for mount in mounts:
        if mount.version == 1 and "cpuset" not in mount.controllers:
            continue
        base = root / str(mount.mountpoint).lstrip("/")
        for machine in MACHINE_DIRS:
            top = base / machine
            if not top.is_dir():
                continue
            for current, dirs, _files in os.walk(top):
                for name in dirs:
                    if not VCPU_DIR.match(name):
                        continue
                    vcpu = Path(current) / name
                    try:
                        cpus = parse_cpu_list((vcpu / "cpuset.cpus").read_text())
                    except (FileNotFoundError, ValueError):
                        continue
                    if cpus and (not online or cpus < online):
                        found.setdefault(_guest_of(vcpu, top), set()).update(cpus)
    return {guest: frozenset(cpus) for guest, cpus in sorted(found.items())}


@dataclass(frozen=True)
class CpuOwners:
    isolated: frozenset[int] = frozenset()
    nohz_full: frozenset[int] = frozenset()
    guests: dict[str, frozenset[int]] = field(default_factory=dict)

    @property
    def taken(self) -> frozenset[int]:
        cpus = set(self.isolated | self.nohz_full)
        for pinned in self.guests.values():
            cpus |= pinned
        return frozenset(cpus)

    def reasons(self) -> dict[int, str]:
        """CPU -> why helpers stay off it."""
        why: dict[int, str] = {}
        for guest, cpus in self.guests.items():
            for cpu in cpus:
                why[cpu] = f"vCPUs of guest {guest} are pinned there"
        for cpu in self.nohz_full:
            why[cpu] = "nohz_full"
        for cpu in self.isolated:
            why[cpu] = "isolated"
        return why


def cpu_owners(root: Path = Path("/")) -> CpuOwners:
    return CpuOwners(_cpu_file(root, "isolated"), _cpu_file(root, "nohz_full"), pinned_vcpus(root))

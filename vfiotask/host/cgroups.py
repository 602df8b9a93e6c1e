"""The CPU quota of the cgroups a process is in (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).

A process confined to 1.5 CPUs' worth of time gains nothing from a fourth thread: the extra
threads only get throttled.  The quota that binds is the smallest one on the way from the
process's cgroup up to the root of the hierarchy, and a host may mount v1 hierarchies beside a
v2 one (this is what a hybrid systemd host does), so every hierarchy with the CPU controller
counts.  Paths come from `/proc/PID/cgroup` and the mounts from `/proc/self/mountinfo`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

MOUNTINFO = "proc/self/mountinfo"


@dataclass(frozen=True)
class CgroupMount:
    """One mounted hierarchy: version 1 (with its controllers) or 2, its root and where it is mounted."""

    version: int
    controllers: frozenset[str]
    root: PurePosixPath
    mountpoint: PurePosixPath


@dataclass(frozen=True)
class CpuQuota:
    """A quota in CPUs (quota / period) and the cgroup directory that set it."""

    cpus: float
    directory: Path

    @property
    def whole_cpus(self) -> int:
        """Threads worth running under the quota: its whole CPUs, at least one."""
        return max(1, math.floor(self.cpus + 1e-9))


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def cgroup_mounts(root: Path = Path("/")) -> list[CgroupMount]:
    """Every cgroup hierarchy mounted in this mount namespace, in mount order."""
    found: list[CgroupMount] = []
    for line in (root / MOUNTINFO).read_text().splitlines():
        before, sep, after = line.partition(" - ")
        left, right = before.split(), after.split()
        if not sep or len(left) < 5 or len(right) < 3:
            continue
        fstype = right[0]
        if fstype == "cgroup2":
            controllers: frozenset[str] = frozenset()
            version = 2
        elif fstype == "cgroup":
            controllers = frozenset(right[2].split(","))
            version = 1
        else:
            continue
        found.append(CgroupMount(version, controllers, PurePosixPath(_unescape(left[3])),
                                 PurePosixPath(_unescape(left[4]))))
    return found


def process_cgroups(root: Path = Path("/"), pid: int | str = "self") -> dict[str, PurePosixPath]:
    """Controller name -> cgroup path of the process; the v2 hierarchy is under the key ``""``."""
    found: dict[str, PurePosixPath] = {}
    for line in (root / f"proc/{pid}/cgroup").read_text().splitlines():
        _hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            found[""] = PurePosixPath(path)
            continue
        for name in controllers.split(","):
            found[name] = PurePosixPath(path)
    return found


def _directory(root: Path, mount: CgroupMount, path: PurePosixPath) -> Path:
    """The process's cgroup directory inside a mount (a container's mount root hides its ancestors)."""
    try:
        relative = path.relative_to(mount.root)
    except ValueError:
        relative = PurePosixPath(".")
    return root / str(mount.mountpoint).lstrip("/") / str(relative)


def _ancestors(directory: Path, top: Path) -> list[Path]:
    chain = [directory]
    while chain[-1] != top and top in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except FileNotFoundError:
        return None
    if len(fields) < 1 or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100000
    return int(fields[0]) / period if period > 0 else None


def cpu_quota(root: Path = Path("/"), pid: int | str = "self") -> CpuQuota | None:
    """The tightest CPU quota over the process's cgroup and its ancestors, in every hierarchy.

    None when nothing limits it (or the host has no cgroups mounted).
    """
    try:
        paths = process_cgroups(root, pid)
        mounts = cgroup_mounts(root)
    except (FileNotFoundError, PermissionError) as exc:
        log.debug("no cgroup information: %s", exc)
        return None
    best: CpuQuota | None = None
    for mount in mounts:
        if mount.version == 1 and "cpu" in mount.controllers and "cpu" in paths:
            path, reader = paths["cpu"], _v1_quota
        elif mount.version == 2 and "" in paths:
            path, reader = paths[""], _v2_quota
        else:
            continue
        top = root / str(mount.mountpoint).lstrip("/")
        for directory in _ancestors(_directory(root, mount, path), top):
            cpus = reader(directory)
            if cpus is not None and (best is None or cpus < best.cpus):
                best = CpuQuota(cpus, directory)
    return best


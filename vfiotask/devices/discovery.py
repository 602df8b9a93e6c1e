"""One entry point for discovery, whatever reads the tree."""

from __future__ import annotations

import os
from pathlib import Path

from vfiotask.devices.model import Host, HostPaths
from vfiotask.devices.sysfs import discover_sysfs
from vfiotask.errors import UsageError

SYSFS_ROOT_ENV = "VFIOTASK_SYSFS_ROOT"


def sysfs_root_from_env(value: str | Path | None) -> Path | None:
    """The --sysfs-root given, else VFIOTASK_SYSFS_ROOT, else None (the real /sys)."""
    if value:
        return Path(value)
    env = os.environ.get(SYSFS_ROOT_ENV)
    return Path(env) if env else None


def require_sysfs_tree(sys: Path) -> None:
    """A --sysfs-root that is no /sys-like tree is refused, not read as an empty host (or, for
    one whose parent is `/`, silently as this host)."""
    if not (sys / "bus" / "pci" / "devices").is_dir():
        raise UsageError(
            f"{sys} is not a sysfs tree (no bus/pci/devices)",
            hint="give --sysfs-root a directory laid out like /sys, e.g. fixtures/sysfs/viable/sys",
        )


def discover(sysfs_root: Path | None = None) -> Host:
    """Every PCI device and IOMMU group: pyudev on the real host, the sysfs reader for a fixture
    tree (`sysfs_root`, a directory laid out as the kernel lays out /sys)."""
    paths = HostPaths.for_root(sysfs_root)
    if paths.fixture:
        require_sysfs_tree(paths.sys)
        return discover_sysfs(paths)
    try:
        from vfiotask.devices.udev import discover_udev

        return discover_udev(paths)
    except ImportError:  # pyudev missing: the same facts, read directly
        return discover_sysfs(paths)

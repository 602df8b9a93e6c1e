"""Discovery by reading a sysfs tree directly: fixture trees (DIR standing for /sys) and /sys.

pyudev insists on the real /sys, so fixture trees need this reader; it reads exactly the files
and links the kernel exposes, so pointing it at /sys gives what pyudev gives.
"""

from __future__ import annotations

import os
from pathlib import Path

from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice


def read_attr(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def parse_int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def read_device(sys_path: Path) -> PciDevice:
    group = parse_int(link_name(sys_path / "iommu_group"))
    node = parse_int(read_attr(sys_path / "numa_node"))
    override = read_attr(sys_path / "driver_override")
    return PciDevice(
        address=sys_path.name,
        vendor=(read_attr(sys_path / "vendor") or "0x0000").removeprefix("0x"),
        device=(read_attr(sys_path / "device") or "0x0000").removeprefix("0x"),
        class_code=parse_int(read_attr(sys_path / "class"), 16) or 0,
        driver=link_name(sys_path / "driver"),
        iommu_group=group,
        numa_node=None if node is None or node < 0 else node,
        driver_override=None if override in (None, "", "(null)") else override,
        sys_path=sys_path,
    )


def discover_sysfs(paths: HostPaths) -> Host:
    host = Host(paths=paths, source="sysfs")
    listing = paths.sys / "bus" / "pci" / "devices"
    for entry in sorted(listing.iterdir()) if listing.is_dir() else []:
        device = read_device(Path(os.path.realpath(entry)))
        host.devices[device.address] = device
    groups_dir = paths.sys / "kernel" / "iommu_groups"
    for group_dir in sorted(groups_dir.iterdir()) if groups_dir.is_dir() else []:
        number = parse_int(group_dir.name)
        if number is None:
            continue
        members = sorted(p.name for p in (group_dir / "devices").iterdir()) if (group_dir / "devices").is_dir() else []
        host.groups[number] = IommuGroup(number, tuple(host.devices[a] for a in members if a in host.devices))
    return host

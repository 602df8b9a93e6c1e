"""Discovery by reading a sysfs tree directly: fixture trees (DIR standing for /sys) and /sys.

pyudev insists on the real /sys, so fixture trees need this reader; it reads exactly the files
and links the kernel exposes, so pointing it at /sys gives what pyudev gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice


def read_attr(path: Path) -> str | None:
    """The attribute's text; None when it cannot be read or is not text (the kernel writes
    ASCII, so anything else is a damaged tree, not a device to describe)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
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


def make_device(address: str, attr: Callable[[str], str | None], *, driver: str | None, sys_path: Path) -> PciDevice:
    """A PciDevice from the attribute files of its sysfs directory, whoever reads them (this
    reader, or pyudev on the real host): one place decides what "-1" or "(null)" mean."""
    node = parse_int(attr("numa_node"))
    override = attr("driver_override")
    return PciDevice(
        address=address,
        vendor=(attr("vendor") or "0x0000").removeprefix("0x"),
        device=(attr("device") or "0x0000").removeprefix("0x"),
        class_code=parse_int(attr("class"), 16) or 0,
        driver=driver,
        iommu_group=parse_int(link_name(sys_path / "iommu_group")),
        numa_node=None if node is None or node < 0 else node,
        driver_override=None if override in (None, "", "(null)") else override,
        sys_path=sys_path,
    )


def read_device(sys_path: Path) -> PciDevice:
    return make_device(sys_path.name, lambda name: read_attr(sys_path / name),
                       driver=link_name(sys_path / "driver"), sys_path=sys_path)


def discover_sysfs(paths: HostPaths) -> Host:
    host = Host(paths=paths, source="sysfs")
    listing = paths.sys / "bus" / "pci" / "devices"
    for entry in sorted(listing.iterdir()) if listing.is_dir() else []:
        if not entry.is_dir():
            continue  # a link to nowhere: a device removed while we read, or a damaged tree
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

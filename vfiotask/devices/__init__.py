"""The device layer: PCI and IOMMU-group discovery, and DMA containers, real or mock.

Discovery (`discover`) reads the host through pyudev, or a fixture tree given as `sysfs_root`
(a directory laid out as the kernel lays out /sys).  `group_viability` and
`check_devices_usable` say whether devices can be passed through, and why not.
`open_container` opens a container for IOMMU groups: "vfio" (type1v2, or iommufd where only
/dev/iommu exists) or "mock" (the kernel's rules over real mlock, for hosts without an IOMMU).
"""

from __future__ import annotations

from pathlib import Path

from vfiotask.devices.container import DmaContainer, IommuInfo, Mapping
from vfiotask.devices.discovery import SYSFS_ROOT_ENV, discover, sysfs_root_from_env
from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice, normalize_address
from vfiotask.devices.usage import uses_of
from vfiotask.devices.viability import Viability, check_devices_usable, group_viability
from vfiotask.errors import UsageError

CONTAINER_KINDS = ("vfio", "mock")


def open_container(kind: str, groups: list[int], *, sysfs_root: Path | None = None) -> DmaContainer:
    """A container holding `groups`.  "vfio" never falls back to the mock: a host without VFIO
    is a DeviceError that says how to enable it."""
    if kind == "mock":
        from vfiotask.devices.mock import MockContainer

        return MockContainer(groups, sysfs_root=sysfs_root)
    if kind == "vfio":
        from vfiotask.devices.real import open_real_container

        return open_real_container(groups)
    raise UsageError(f"unknown container kind {kind!r}", hint=f"use one of {', '.join(CONTAINER_KINDS)}")


__all__ = [
    "CONTAINER_KINDS",
    "SYSFS_ROOT_ENV",
    "DmaContainer",
    "Host",
    "HostPaths",
    "IommuGroup",
    "IommuInfo",
    "Mapping",
    "PciDevice",
    "Viability",
    "check_devices_usable",
    "discover",
    "group_viability",
    "normalize_address",
    "open_container",
    "sysfs_root_from_env",
    "uses_of",
]

"""Discovery on the real host through pyudev (libudev's view of /sys)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice
from vfiotask.devices.sysfs import link_name, parse_int


def _attr(device: object, name: str) -> str | None:
    try:
        value = device.attributes.asstring(name)  # type: ignore[attr-defined]
    except (KeyError, UnicodeDecodeError, OSError):
        return None
    return str(value).strip()


def discover_udev(paths: HostPaths) -> Host:
    import pyudev

    host = Host(paths=paths, source="pyudev")
    members: dict[int, list[PciDevice]] = defaultdict(list)
    for udev_device in pyudev.Context().list_devices(subsystem="pci"):
        sys_path = Path(udev_device.sys_path)
        node = parse_int(_attr(udev_device, "numa_node"))
        override = _attr(udev_device, "driver_override")
        group = parse_int(link_name(sys_path / "iommu_group"))
        device = PciDevice(
            address=udev_device.sys_name,
            vendor=(_attr(udev_device, "vendor") or "0x0000").removeprefix("0x"),
            device=(_attr(udev_device, "device") or "0x0000").removeprefix("0x"),
            class_code=parse_int(_attr(udev_device, "class"), 16) or 0,
            driver=udev_device.driver,
            iommu_group=group,
            numa_node=None if node is None or node < 0 else node,
            driver_override=None if override in (None, "", "(null)") else override,
            sys_path=Path(os.path.realpath(sys_path)),
        )
        host.devices[device.address] = device
        if group is not None:
            members[group].append(device)
    host.devices = dict(sorted(host.devices.items()))
    for number in sorted(members):
        host.groups[number] = IommuGroup(number, tuple(sorted(members[number], key=lambda d: d.address)))
    return host

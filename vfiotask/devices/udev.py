"""Discovery on the real host through pyudev (libudev's view of /sys)."""

from __future__ import annotations

import os
from collections import defaultdict
from functools import partial
from pathlib import Path

from vfiotask.devices.model import Host, HostPaths, IommuGroup, PciDevice
from vfiotask.devices.sysfs import make_device


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
        device = make_device(udev_device.sys_name, partial(_attr, udev_device),
                             driver=udev_device.driver, sys_path=Path(os.path.realpath(udev_device.sys_path)))
        host.devices[device.address] = device
        if device.iommu_group is not None:
            members[device.iommu_group].append(device)
    host.devices = dict(sorted(host.devices.items()))
    for number in sorted(members):
        host.groups[number] = IommuGroup(number, tuple(sorted(members[number], key=lambda d: d.address)))
    return host

"""Can a group (and so a device) be handed to VFIO?  The kernel's rule, with the reasons said.

The kernel makes /dev/vfio/N usable only when every device of group N is bound to vfio-pci, to
a driver that leaves DMA to VFIO (pci-stub, pcieport), or to no driver.  Saying *which* sibling
is in the way, and what to run, is the point: the kernel only says EBUSY or "not viable".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vfiotask.devices.model import Host, IommuGroup, PciDevice, normalize_address
from vfiotask.devices.usage import uses_of
from vfiotask.errors import DeviceError

ENABLE_IOMMU_HINT = (
    "enable the IOMMU in firmware (VT-d / AMD-Vi) and on the kernel command line "
    "(intel_iommu=on or amd_iommu=on, and iommu=pt), reboot, then modprobe vfio-pci"
)


@dataclass
class Viability:
    group: int
    viable: bool
    reasons: list[str] = field(default_factory=list)
    blocking: list[PciDevice] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "viable": self.viable,
            "reasons": list(self.reasons),
            "blocking": [device.address for device in self.blocking],
        }


def group_viability(group: IommuGroup, *, managed: Iterable[str] = ()) -> Viability:
    """Whether `group` can be opened now.  Devices in `managed` will be rebound by the caller
    (libvirt's managed='yes'), so their own driver does not count against the group."""
    skip = {normalize_address(a) for a in managed}
    blocking = [d for d in group.devices if d.blocks_group and d.address not in skip]
    reasons = [f"{d.address} [{d.ids}] is bound to host driver {d.driver}" for d in blocking]
    if not group.devices:
        reasons.append("the group has no PCI device")
    elif not blocking and not any(d.vfio_ready or d.address in skip for d in group.devices):
        reasons.append(f"no device of the group is bound to vfio-pci, so /dev/vfio/{group.number} does not exist")
    return Viability(group.number, not reasons, reasons, blocking)


def viability_fix(host: Host, viability: Viability) -> str:
    """The command that makes a group viable: bind it (all of it) to vfio-pci."""
    addresses = [d.address for d in viability.blocking]
    if addresses:
        fix = f"bind the whole group to vfio-pci: vfiotask bind {' '.join(addresses)}"
    else:
        members = " ".join(host.groups[viability.group].addresses) if viability.group in host.groups else ""
        fix = f"bind the group to vfio-pci: vfiotask bind {members}".rstrip()
    if host.paths.fixture:
        fix += f" --sysfs-root {host.paths.sys}"
    return fix


def not_viable_error(host: Host, viability: Viability, what: str) -> DeviceError:
    return DeviceError(f"{what}: IOMMU group {viability.group} is not viable: {'; '.join(viability.reasons)}",
                       hint=viability_fix(host, viability))


def check_devices_usable(addresses: Iterable[str], sysfs_root: Path | None = None, *, managed: bool = False) -> None:
    """Raise unless every device can be passed through now (UsageError for an unknown address,
    DeviceError with the fix otherwise).  `managed=True`: the listed devices may still be on host
    drivers because the caller rebinds them, but must not be in use by the host."""
    from vfiotask.devices.discovery import discover

    wanted = [normalize_address(a) for a in addresses]
    host = discover(sysfs_root)
    for address in wanted:
        device = host.device(address)
        if device.iommu_group is None:
            raise DeviceError(f"{address} has no IOMMU group: the host's IOMMU is off", hint=ENABLE_IOMMU_HINT)
        if managed:
            uses = uses_of(device, host.paths)
            if uses:
                raise DeviceError(f"{address} is in use by the host: {'; '.join(uses)}",
                                  hint="choose a device the host does not need")
        viability = group_viability(host.group(device.iommu_group), managed=wanted if managed else ())
        if not viability.viable:
            raise not_viable_error(host, viability, address)

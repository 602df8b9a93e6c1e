"""What discovery finds: PCI devices, IOMMU groups, and where the host's trees are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vfiotask.errors import UsageError

# Drivers under which a device does not stop its group from being used by VFIO: vfio-pci (and
# its vendor variants), and the drivers that leave DMA ownership to VFIO (driver_managed_dma).
VFIO_DRIVERS = frozenset({"vfio-pci"})
DMA_NEUTRAL_DRIVERS = frozenset({"pci-stub", "pcieport"})


def is_vfio_driver(driver: str | None) -> bool:
    return driver is not None and (driver in VFIO_DRIVERS or driver.endswith(("-vfio-pci", "_vfio_pci")))


@dataclass(frozen=True)
class HostPaths:
    """/sys, /proc and /dev of the host described.  A fixture gives DIR for /sys, DIR/../proc..."""

    sys: Path
    proc: Path
    dev: Path
    fixture: bool

    @classmethod
    def for_root(cls, sysfs_root: Path | None) -> HostPaths:
        if sysfs_root is None:
            return cls(Path("/sys"), Path("/proc"), Path("/dev"), fixture=False)
        root = Path(sysfs_root).absolute()
        return cls(root, root.parent / "proc", root.parent / "dev", fixture=True)


@dataclass(frozen=True)
class PciDevice:
    address: str
    vendor: str
    device: str
    class_code: int
    driver: str | None
    iommu_group: int | None
    numa_node: int | None
    driver_override: str | None
    sys_path: Path

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"

    @property
    def is_bridge(self) -> bool:
        """PCI-to-PCI (and semi-transparent) bridges: class 06, subclass 04 or 09."""
        return self.class_code >> 16 == 0x06 and (self.class_code >> 8) & 0xFF in (0x04, 0x09)

    @property
    def vfio_ready(self) -> bool:
        return is_vfio_driver(self.driver)

    @property
    def blocks_group(self) -> bool:
        """A device bound to a host driver keeps its whole group from being handed to VFIO."""
        return not (self.driver is None or self.vfio_ready or self.driver in DMA_NEUTRAL_DRIVERS)

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "vendor_device": self.ids,
            "class": f"{self.class_code:#08x}",
            "driver": self.driver,
            "iommu_group": self.iommu_group,
            "numa_node": self.numa_node,
            "driver_override": self.driver_override,
            "bridge": self.is_bridge,
        }


@dataclass(frozen=True)
class IommuGroup:
    number: int
    devices: tuple[PciDevice, ...]

    @property
    def addresses(self) -> list[str]:
        return [device.address for device in self.devices]


@dataclass
class Host:
    """Every PCI device of one host, and its IOMMU groups."""

    paths: HostPaths
    source: str  # "pyudev" or "sysfs"
    devices: dict[str, PciDevice] = field(default_factory=dict)
    groups: dict[int, IommuGroup] = field(default_factory=dict)

    def device(self, address: str) -> PciDevice:
        found = self.devices.get(normalize_address(address))
        if found is None:
            shown = address if len(address) <= 64 else f"{address[:60]}..."  # a hostile value is not echoed whole
            raise UsageError(
                f"no PCI device {shown} under {self.paths.sys}/bus/pci/devices",
                hint="list the devices with 'vfiotask devices' and give a full address such as 0000:01:00.0",
            )
        return found

    def group(self, number: int) -> IommuGroup:
        found = self.groups.get(number)
        if found is None:
            known = ", ".join(str(n) for n in sorted(self.groups)) or "none: the IOMMU is off"
            raise UsageError(
                f"no IOMMU group {number} under {self.paths.sys}/kernel/iommu_groups (groups: {known})",
                hint="list the groups with 'vfiotask devices'",
            )
        return found


def normalize_address(address: str) -> str:
    """'01:00.0' -> '0000:01:00.0' (domain 0 when left out), lower case."""
    text = address.strip().lower()
    return text if text.count(":") == 2 else f"0000:{text}"

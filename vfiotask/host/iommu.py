"""Whether this host can hand devices to VFIO at all: IOMMU, interrupt remapping, device nodes.

Everything comes from files the kernel keeps current (no dmesg, which rotates and needs
privileges): IOMMU groups and `/sys/class/iommu` show an IOMMU that is on; the kernel command
line shows how it was asked for; the interrupt chips in `/proc/interrupts` show remapping, because
the kernel names every remapped chip `IR-...` (IR-IO-APIC, IR-PCI-MSI, IR-PCI-MSIX-...), Intel
and AMD alike.  Each reader takes `root` so that tests read a fixture tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REAL_ROOT = Path("/")
IOMMU_GROUPS = "sys/kernel/iommu_groups"
IOMMU_CLASS = "sys/class/iommu"
CMDLINE = "proc/cmdline"
INTERRUPTS = "proc/interrupts"
UNSAFE_INTERRUPTS = "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
IOMMU_PARAMETERS = ("intel_iommu", "amd_iommu", "iommu", "iommu.passthrough", "iommu.strict")


def kernel_cmdline(root: Path = REAL_ROOT) -> dict[str, str]:
    """The kernel's own parameters (what follows `--` is init's): name -> value ('' for a flag)."""
    try:
        words = (root / CMDLINE).read_text().split()
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for word in words:
        if word == "--":
            break
        name, _, value = word.partition("=")
        found[name] = value
    return found


def iommu_groups(root: Path = REAL_ROOT) -> int:
    base = root / IOMMU_GROUPS
    return sum(1 for entry in base.iterdir() if entry.name.isascii() and entry.name.isdigit()) if base.is_dir() else 0


def iommu_units(root: Path = REAL_ROOT) -> tuple[str, ...]:
    """The IOMMU hardware units the kernel drives (dmar0, ivhd0, ...); none when it is off."""
    base = root / IOMMU_CLASS
    return tuple(sorted(entry.name for entry in base.iterdir())) if base.is_dir() else ()


def interrupt_remapping(root: Path = REAL_ROOT) -> bool | None:
    """True when an interrupt chip is remapped, False when chips exist and none is, None when unknown."""
    try:
        lines = (root / INTERRUPTS).read_text().splitlines()
    except FileNotFoundError:
        return None
    chips = [word for line in lines[1:] for word in line.split() if word.startswith(("IR-", "IO-APIC", "PCI-MSI"))]
    if any(chip.startswith("IR-") for chip in chips):
        return True
    return False if chips else None


def unsafe_interrupts_allowed(root: Path = REAL_ROOT) -> bool:
    """vfio_iommu_type1's allow_unsafe_interrupts: devices are accepted without remapping."""
    try:
        return (root / UNSAFE_INTERRUPTS).read_text().strip() in ("Y", "1")
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class IommuFacts:
    groups: int
    units: tuple[str, ...]
    cmdline: dict[str, str]
    remapping: bool | None
    unsafe_interrupts: bool
    vfio_node: bool
    iommufd_node: bool

    @property
    def enabled(self) -> bool:
        return self.groups > 0

    @property
    def requested(self) -> dict[str, str]:
        """The IOMMU parameters given on the kernel command line."""
        return {name: value for name, value in self.cmdline.items() if name in IOMMU_PARAMETERS}


def iommu_facts(root: Path = REAL_ROOT) -> IommuFacts:
    return IommuFacts(
        groups=iommu_groups(root),
        units=iommu_units(root),
        cmdline=kernel_cmdline(root),
        remapping=interrupt_remapping(root),
        unsafe_interrupts=unsafe_interrupts_allowed(root),
        vfio_node=(root / "dev/vfio/vfio").exists(),
        iommufd_node=(root / "dev/iommu").exists(),
    )

"""Is a device something the host itself is using?  Disks with mounted filesystems, network
interfaces that are up, and the console are refused before anything is unbound: taking one away
would crash or cut off the very host being configured.

Everything is read from the trees in `HostPaths` (so fixture trees carry their own proc/mounts),
following the links the kernel exposes: `block/NAME` (and partitions, and holders such as
device-mapper) under the device, `net/IFACE/operstate`, `/sys/class/tty/console/active`.
"""

from __future__ import annotations

import os
from pathlib import Path

from vfiotask.devices.model import HostPaths, PciDevice
from vfiotask.devices.sysfs import parse_int, read_attr

IFF_UP = 0x1


def _class_members(paths: HostPaths, device_dir: Path, cls: str) -> list[Path]:
    """Entries of /sys/class/<cls> whose device lives below `device_dir` (any depth: SATA disks
    sit under ata*/host*/target*/, NVMe namespaces under nvme/nvme*/)."""
    base = os.path.realpath(device_dir) + os.sep
    found = []
    class_dir = paths.sys / "class" / cls
    for entry in sorted(class_dir.iterdir()) if class_dir.is_dir() else []:
        real = os.path.realpath(entry)
        if real.startswith(base):
            found.append(Path(real))
    return found


def _block_names(paths: HostPaths, device_dir: Path) -> set[str]:
    """Disks under the device, their partitions, and (recursively) what holds them."""
    names: set[str] = set()
    pending: list[Path] = _class_members(paths, device_dir, "block")
    while pending:
        disk = pending.pop()
        if disk.name in names:
            continue
        names.add(disk.name)
        holders = disk / "holders"
        for holder in sorted(holders.iterdir()) if holders.is_dir() else []:
            pending.append(Path(os.path.realpath(paths.sys / "class" / "block" / holder.name)))
    return names


def _mapper_names(paths: HostPaths, names: set[str]) -> dict[str, str]:
    """dm-N -> its /dev/mapper name."""
    found = {}
    for name in names:
        mapped = read_attr(paths.sys / "class" / "block" / name / "dm" / "name")
        if mapped:
            found[mapped] = name
    return found


def _mounted_sources(paths: HostPaths) -> list[tuple[str, str]]:
    """(source device basename, mount point) from proc/mounts and swap areas from proc/swaps."""
    entries: list[tuple[str, str]] = []
    for filename, source_col, target_col in (("mounts", 0, 1), ("swaps", 0, None)):
        try:
            lines = (paths.proc / filename).read_text().splitlines()
        except OSError:
            continue
        for line in lines[1:] if filename == "swaps" else lines:
            fields = line.split()
            if len(fields) <= source_col or not fields[source_col].startswith("/dev/"):
                continue
            source = fields[source_col]
            if not paths.fixture:
                source = os.path.realpath(source)
            target = fields[target_col] if target_col is not None else "swap"
            entries.append((source, target))
    return entries


def uses_of(device: PciDevice, paths: HostPaths) -> list[str]:
    """Why the host needs this device; empty when it may be taken."""
    reasons: list[str] = []
    blocks = _block_names(paths, device.sys_path)
    if blocks:
        mapper = _mapper_names(paths, blocks)
        for source, target in _mounted_sources(paths):
            base = os.path.basename(source)
            if base in blocks or (source.startswith("/dev/mapper/") and base in mapper):
                what = "a swap area" if target == "swap" else f"the filesystem at {target}"
                reasons.append(f"disk {base} backs {what}")
    for iface in _class_members(paths, device.sys_path, "net"):
        operstate = read_attr(iface / "operstate")
        flags = parse_int(read_attr(iface / "flags"), 16) or 0
        up = operstate == "up" or flags & IFF_UP
        if up:
            reasons.append(f"network interface {iface.name} is up")
    consoles = (read_attr(paths.sys / "class" / "tty" / "console" / "active") or "").split()
    for tty in _class_members(paths, device.sys_path, "tty"):
        if tty.name in consoles:
            reasons.append(f"{tty.name} is the system console")
    text_console = any(c.startswith("tty") and c[3:].isdigit() for c in consoles)
    boot_vga = read_attr(device.sys_path / "boot_vga") == "1"
    if boot_vga and text_console and _class_members(paths, device.sys_path, "graphics"):
        reasons.append("it is the boot VGA device showing the text console")
    return reasons

"""Who holds a PCI device: processes with its device nodes or sysfs resources open or mapped, and
consoles or boot framebuffers drawn on it.

A GPU that something holds will not unbind: the driver's remove waits for the last user, and a
boot framebuffer (efifb, simplefb, vesafb) keeps the device's memory claimed so vfio-pci cannot
request it.  This reads what the kernel shows: every process's `fd/` links and `maps` (device
nodes under /dev/dri that sysfs links to the device, /dev/nvidiaN for its minor, its
`/dev/vfio/GROUP`, and its resource, config and rom files), `/sys/class/vtconsole` with the
framebuffers under the device, and `/proc/iomem`, where a boot framebuffer's range sits inside
the device's BAR.  Paths are given relative to a tree root so tests read fixture trees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfiotask.host.procfs import command, pid_dirs

SYSFS_FILES = re.compile(r"^(resource\d+(_wc)?|config|rom)$")
BOOT_FRAMEBUFFERS = ("efifb", "vesafb", "simplefb", "BOOTFB", "simple-framebuffer")


@dataclass(frozen=True)
class Holder:
    """A process (pid, command) or a kernel user (pid None) and what it holds."""

    pid: int | None
    command: str
    what: str

    def describe(self) -> str:
        who = f"{self.command} (pid {self.pid})" if self.pid is not None else self.command
        return f"{who}: {self.what}"

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "command": self.command, "holds": self.what}


@dataclass(frozen=True)
class DeviceFiles:
    """The paths (as processes see them) that stand for one device."""

    sysfs_dir: str  # /sys/devices/pci0000:00/.../0000:01:00.0
    nodes: frozenset[str] = frozenset()  # /dev/dri/card0, /dev/dri/renderD128, /dev/nvidia0, /dev/vfio/12

    def names(self, path: str) -> bool:
        if path in self.nodes:
            return True
        parent, _, name = path.rpartition("/")
        return parent == self.sysfs_dir and bool(SYSFS_FILES.match(name))


def device_files(sys_root: Path, device_dir: Path, group: int | None, proc_root: Path) -> DeviceFiles:
    """The device nodes and sysfs files of the device at `device_dir` (under `sys_root`)."""
    real = Path(os.path.realpath(device_dir))
    sysfs_dir = "/sys/" + str(real.relative_to(os.path.realpath(sys_root)))
    nodes = {f"/dev/dri/{entry.name}" for entry in _entries(real / "drm") if entry.name.startswith(("card", "render"))}
    minor = _nvidia_minor(proc_root, real.name)
    if minor is not None:
        nodes.add(f"/dev/nvidia{minor}")
    if group is not None:
        nodes.add(f"/dev/vfio/{group}")
    return DeviceFiles(sysfs_dir, frozenset(nodes))


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _nvidia_minor(proc_root: Path, address: str) -> int | None:
    """NVIDIA's driver names the device's minor in /proc/driver/nvidia/gpus/ADDR/information."""
    try:
        text = (proc_root / "driver/nvidia/gpus" / address / "information").read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Device Minor" and value.strip().isascii() and value.strip().isdigit():
            return int(value)
    return None


@dataclass
class ProcessScan:
    holders: list[Holder] = field(default_factory=list)
    unreadable: int = 0  # processes whose fds or maps could not be read (not root)


def process_holders(files: DeviceFiles, proc_root: Path = Path("/proc")) -> ProcessScan:
    """Every process with one of the device's files open (fd) or mapped (maps)."""
    scan = ProcessScan()
    own = {str(os.getpid())} if proc_root == Path("/proc") else set()
    for pid_dir in pid_dirs(proc_root):
        if pid_dir.name in own:
            continue
        held: list[str] = []
        denied = False
        try:
            for fd in os.scandir(pid_dir / "fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if files.names(target) and f"{target} open" not in held:
                    held.append(f"{target} open")
        except PermissionError:
            denied = True
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            pass  # ended meanwhile (then maps is gone too), or a kernel thread
        try:
            with open(pid_dir / "maps", errors="replace") as maps:
                for line in maps:
                    parts = line.split(None, 5)
                    path = parts[5].strip() if len(parts) == 6 else ""
                    if path and files.names(path) and f"{path} mapped" not in held:
                        held.append(f"{path} mapped")
        except PermissionError:
            denied = True
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
            continue
        scan.unreadable += denied
        if held:
            scan.holders.append(Holder(int(pid_dir.name), command(pid_dir) or "?", ", ".join(held)))
    return scan


def console_holders(sys_root: Path, device_dir: Path) -> list[Holder]:
    """A framebuffer console (fbcon) bound while one of the device's framebuffers exists."""
    real = os.path.realpath(device_dir) + os.sep
    fbs = [entry.name for entry in _entries(sys_root / "class/graphics")
           if entry.name.startswith("fb") and os.path.realpath(entry).startswith(real)]
    if not fbs:
        return []
    found = []
    for vtcon in _entries(sys_root / "class/vtconsole"):
        try:
            bound = (vtcon / "bind").read_text().strip() == "1"
            name = (vtcon / "name").read_text().strip()
        except OSError:
            continue
        if bound and "frame buffer" in name:
            found.append(Holder(None, "fbcon", f"{vtcon.name} draws the console on {', '.join(fbs)}"))
    return found


@dataclass(frozen=True)
class IomemRange:
    start: int
    end: int
    name: str
    depth: int


def parse_iomem(text: str) -> list[IomemRange]:
    ranges = []
    for line in text.splitlines():
        span, sep, name = line.partition(" : ")
        low, dash, high = span.strip().partition("-")
        if not sep or not dash:
            continue
        try:
            ranges.append(IomemRange(int(low, 16), int(high, 16), name.strip(), (len(span) - len(span.lstrip())) // 2))
        except ValueError:
            continue
    return ranges


def framebuffer_holders(proc_root: Path, address: str) -> list[Holder]:
    """A boot framebuffer whose memory lies in one of the device's BARs (root sees addresses)."""
    try:
        ranges = parse_iomem((proc_root / "iomem").read_text())
    except (FileNotFoundError, PermissionError):
        return []
    bars = [r for r in ranges if r.name == address and r.end > 0]
    found = []
    for fb in ranges:
        if fb.name in BOOT_FRAMEBUFFERS and any(bar.start <= fb.start and fb.end <= bar.end for bar in bars):
            found.append(Holder(None, fb.name, f"boot framebuffer at {fb.start:#x}-{fb.end:#x} in its memory"))
    return found


def holders_of(sys_root: Path, proc_root: Path, device_dir: Path, group: int | None) -> ProcessScan:
    """Everything that holds the device: processes, then the console and boot framebuffers."""
    files = device_files(sys_root, device_dir, group, proc_root)
    scan = process_holders(files, proc_root)
    scan.holders += console_holders(sys_root, device_dir)
    scan.holders += framebuffer_holders(proc_root, Path(device_dir).name)
    return scan

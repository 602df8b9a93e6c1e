"""Changing which driver holds a PCI device: the three sysfs writes, and a fake kernel for them.

The real control writes /sys/bus/pci/devices/ADDR/driver_override, the driver's `unbind` and
/sys/bus/pci/drivers_probe, and lets the kernel act.  On a fixture tree (`--sysfs-root`) nothing
would act, so `FakeSysfsKernel` applies the kernel's semantics after each write: unbinding
removes the driver links, probing binds the device to its driver_override (when that driver is
loaded) or else to the first loaded driver whose modules.alias pattern matches its modalias.
Links are written relative, exactly as the kernel shows them, so a bind and its undo leave a
fixture tree byte for byte as it was.  Both write by descriptor and only into a tree no one but
root (or the user running vfiotask) can change (SysfsDriverControl says how).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from pathlib import Path
from typing import Protocol

from vfiotask.devices.model import HostPaths
from vfiotask.devices.sysfs import link_name, read_attr
from vfiotask.dirfd import Dir, open_root, walk_in_tree
from vfiotask.errors import DeviceError, UntrustedPathError, describe_exception
from vfiotask.trust import trusted_owners, untrusted


class DriverControl(Protocol):
    paths: HostPaths

    def driver_of(self, address: str) -> str | None: ...

    def override_of(self, address: str) -> str | None: ...

    def check_writable(self) -> None: ...

    def set_override(self, address: str, driver: str | None) -> None: ...

    def unbind(self, address: str, driver: str) -> None: ...

    def probe(self, address: str) -> None: ...

    def driver_loaded(self, driver: str) -> bool: ...


_TREE_HINT = ("root writes into a sysfs tree only where no one else can change it: use /sys, or a tree root "
              "owns at every level (copy a fixture as root), or run as the user who owns it")
PCI = ("bus", "pci")


class SysfsDriverControl:
    """The real thing: writes the files and lets the kernel act.

    Reading a tree is allowed whoever owns it; writing goes by descriptor: the tree's root, then
    each level (a link at a level, like /sys/bus/pci/devices/ADDR, resolved inside the tree and
    never out of it), then the file opened without following a link, and every one of them
    owned by root (or the user running vfiotask) and writable by no one else.  So a tree another
    user prepared cannot turn root's write into a write to a file of their choosing.
    """

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    def device_dir(self, address: str) -> Path:
        return self.paths.sys / "bus" / "pci" / "devices" / address

    def driver_of(self, address: str) -> str | None:
        return link_name(self.device_dir(address) / "driver")

    def override_of(self, address: str) -> str | None:
        value = read_attr(self.device_dir(address) / "driver_override")
        return None if value in (None, "", "(null)") else value

    def driver_loaded(self, driver: str) -> bool:
        return (self.paths.sys / "bus" / "pci" / "drivers" / driver).is_dir()

    # -- writing by descriptor ---------------------------------------------------------------

    def _check_level(self, path: Path, info: os.stat_result) -> None:
        problem = untrusted(info, trusted_owners())
        if problem:
            raise UntrustedPathError(f"sysfs tree {self.paths.sys}: {path} {problem}, so another user could change "
                                     "where root's write lands; refused", hint=_TREE_HINT)

    def _level(self, parts: tuple[str, ...]) -> Dir:
        """The directory `parts` below the tree's root, every level checked (see the class)."""
        root = open_root(self.paths.sys)  # the path is the administrator's; what is below it is checked
        try:
            problem = untrusted(os.fstat(root.fd), trusted_owners())
            if problem:
                raise UntrustedPathError(f"sysfs tree {self.paths.sys} {problem}, so another user could change where "
                                         "root's write lands; refused", hint=_TREE_HINT)
            return walk_in_tree(root, parts, check=self._check_level)
        finally:
            root.close()

    def check_writable(self) -> None:
        """Refuse, before anything is changed, a tree whose root or PCI directories others can change."""
        try:
            for parts in (PCI, (*PCI, "devices"), (*PCI, "drivers")):
                self._level(parts).close()
        except OSError as exc:
            raise DeviceError(f"cannot write into {self.paths.sys}: {describe_exception(exc)}",
                              hint="give a tree laid out like /sys") from exc

    def _write_at(self, parts: tuple[str, ...], text: str, *, create: bool = False) -> None:
        path = self.paths.sys.joinpath(*parts)
        what = text.strip() or "an empty line"
        try:
            with self._level(parts[:-1]) as directory:
                flags = os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | (os.O_CREAT if create else 0)
                fd = directory.open(parts[-1], flags, 0o644)
                try:
                    info = os.fstat(fd)
                    if not stat.S_ISREG(info.st_mode):
                        raise DeviceError(f"{path} is not a sysfs attribute; nothing written",
                                          hint="give a tree laid out like /sys")
                    self._check_level(path, info)
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
        except OSError as exc:
            raise DeviceError(f"writing {what!r} to {path} failed: {exc.strerror or describe_exception(exc)}",
                              hint="check dmesg for the driver's reason") from exc

    def set_override(self, address: str, driver: str | None) -> None:
        self._write_at((*PCI, "devices", address, "driver_override"), f"{driver}\n" if driver else "\n")

    def unbind(self, address: str, driver: str) -> None:
        self._write_at((*PCI, "drivers", driver, "unbind"), address)

    def probe(self, address: str) -> None:
        self._write_at((*PCI, "drivers_probe"), address)


class FakeSysfsKernel(SysfsDriverControl):
    """The kernel's side of those writes, for fixture trees only, made by descriptor like the writes."""

    def __init__(self, paths: HostPaths) -> None:
        if not paths.fixture:
            raise ValueError("the fake kernel never acts on the real /sys")
        super().__init__(paths)

    def _drivers(self) -> Path:
        return self.paths.sys / "bus" / "pci" / "drivers"

    def set_override(self, address: str, driver: str | None) -> None:
        self._write_at((*PCI, "devices", address, "driver_override"), f"{driver}\n" if driver else "(null)\n",
                       create=True)

    def unbind(self, address: str, driver: str) -> None:
        with self._level((*PCI, "devices", address)) as device:
            if _link_at(device, "driver") != driver:
                raise DeviceError(f"writing {address!r} to {self._drivers() / driver / 'unbind'} failed: "
                                  f"{os.strerror(errno.ENODEV)}", hint="the device is not bound to that driver")
            with self._level((*PCI, "drivers", driver)) as driver_dir:
                device.unlink("driver")
                driver_dir.unlink(device.path.name)

    def probe(self, address: str) -> None:
        with self._level((*PCI, "devices", address)) as device:
            info = device.lstat("driver")
            if info is not None and stat.S_ISLNK(info.st_mode):
                return  # already bound: the kernel does nothing
            override = self.override_of(address)
            if override:
                if self.driver_loaded(override):
                    self._attach(device, override)
                return
            modalias = read_attr(device.path / "modalias") or ""
            aliases = self.paths.sys.parent / "modules.alias"
            lines = aliases.read_text().splitlines() if aliases.exists() else []
            for line in lines:
                fields = line.split()
                if len(fields) == 3 and fields[0] == "alias" and fnmatch.fnmatchcase(modalias, fields[1]) \
                        and self.driver_loaded(fields[2]):
                    self._attach(device, fields[2])
                    return

    def _attach(self, device: Dir, driver: str) -> None:
        with self._level((*PCI, "drivers", driver)) as driver_dir:
            os.symlink(os.path.relpath(driver_dir.path, device.path), "driver", dir_fd=device.fd)
            os.symlink(os.path.relpath(device.path, driver_dir.path), device.path.name, dir_fd=driver_dir.fd)


def _link_at(directory: Dir, name: str) -> str | None:
    """The last component of the link `name` in `directory`, read by descriptor."""
    try:
        return os.path.basename(os.readlink(name, dir_fd=directory.fd))
    except OSError:
        return None


def driver_control(paths: HostPaths) -> DriverControl:
    """The fake kernel for a fixture tree, the real files otherwise."""
    return FakeSysfsKernel(paths) if paths.fixture else SysfsDriverControl(paths)

"""Changing which driver holds a PCI device: the three sysfs writes, and a fake kernel for them.

The real control writes /sys/bus/pci/devices/ADDR/driver_override, the driver's `unbind` and
/sys/bus/pci/drivers_probe, and lets the kernel act.  On a fixture tree (`--sysfs-root`) nothing
would act, so `FakeSysfsKernel` applies the kernel's semantics after each write: unbinding
removes the driver links, probing binds the device to its driver_override (when that driver is
loaded) or else to the first loaded driver whose modules.alias pattern matches its modalias.
Links are written relative, exactly as the kernel shows them, so a bind and its undo leave a
fixture tree byte for byte as it was.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from pathlib import Path
from typing import Protocol

from vfiotask.devices.model import HostPaths
from vfiotask.devices.sysfs import link_name, read_attr
from vfiotask.errors import DeviceError


class DriverControl(Protocol):
    paths: HostPaths

    def driver_of(self, address: str) -> str | None: ...

    def override_of(self, address: str) -> str | None: ...

    def set_override(self, address: str, driver: str | None) -> None: ...

    def unbind(self, address: str, driver: str) -> None: ...

    def probe(self, address: str) -> None: ...

    def driver_loaded(self, driver: str) -> bool: ...


class SysfsDriverControl:
    """The real thing: writes the files and lets the kernel act."""

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

    def _write(self, path: Path, text: str) -> None:
        try:
            with open(path, "w") as handle:
                handle.write(text)
        except OSError as exc:
            what = text.strip() or "an empty line"
            raise DeviceError(f"writing {what!r} to {path} failed: {exc.strerror}",
                              hint="check dmesg for the driver's reason") from exc

    def set_override(self, address: str, driver: str | None) -> None:
        self._write(self.device_dir(address) / "driver_override", f"{driver}\n" if driver else "\n")

    def unbind(self, address: str, driver: str) -> None:
        self._write(self.paths.sys / "bus" / "pci" / "drivers" / driver / "unbind", address)

    def probe(self, address: str) -> None:
        self._write(self.paths.sys / "bus" / "pci" / "drivers_probe", address)


class FakeSysfsKernel(SysfsDriverControl):
    """The kernel's side of those writes, for fixture trees only."""

    def __init__(self, paths: HostPaths) -> None:
        if not paths.fixture:
            raise ValueError("the fake kernel never acts on the real /sys")
        super().__init__(paths)

    def _real_device_dir(self, address: str) -> Path:
        return Path(os.path.realpath(self.device_dir(address)))

    def _drivers(self) -> Path:
        return self.paths.sys / "bus" / "pci" / "drivers"

    def set_override(self, address: str, driver: str | None) -> None:
        (self._real_device_dir(address) / "driver_override").write_text(f"{driver}\n" if driver else "(null)\n")

    def unbind(self, address: str, driver: str) -> None:
        device = self._real_device_dir(address)
        if link_name(device / "driver") != driver:
            raise DeviceError(f"writing {address!r} to {self._drivers() / driver / 'unbind'} failed: "
                              f"{os.strerror(errno.ENODEV)}", hint="the device is not bound to that driver")
        (device / "driver").unlink()
        (self._drivers() / driver / address).unlink()

    def probe(self, address: str) -> None:
        device = self._real_device_dir(address)
        if (device / "driver").is_symlink():
            return  # already bound: the kernel does nothing
        override = self.override_of(address)
        if override:
            if self.driver_loaded(override):
                self._attach(device, override)
            return
        modalias = read_attr(device / "modalias") or ""
        aliases = self.paths.sys.parent / "modules.alias"
        lines = aliases.read_text().splitlines() if aliases.exists() else []
        for line in lines:
            fields = line.split()
            if len(fields) == 3 and fields[0] == "alias" and fnmatch.fnmatchcase(modalias, fields[1]) \
                    and self.driver_loaded(fields[2]):
                self._attach(device, fields[2])
                return

    def _attach(self, device: Path, driver: str) -> None:
        driver_dir = Path(os.path.realpath(self._drivers() / driver))
        os.symlink(os.path.relpath(driver_dir, device), device / "driver")
        os.symlink(os.path.relpath(device, driver_dir), driver_dir / device.name)


def driver_control(paths: HostPaths) -> DriverControl:
    """The fake kernel for a fixture tree, the real files otherwise."""
    return FakeSysfsKernel(paths) if paths.fixture else SysfsDriverControl(paths)

"""Vendor and model names of PCI devices, from the udev hardware database (as lspci shows them).

pyudev gives access to libudev's hwdb, which holds the same pci.ids names systemd-udevd stores as
ID_VENDOR_FROM_DATABASE / ID_MODEL_FROM_DATABASE; asking hwdb by modalias works for fixture trees
too, and on hosts where udevd never tagged the device.  No hwdb (a container without
/usr/lib/udev/hwdb.bin, or no libudev): the names are None and the numeric IDs still show.
"""

from __future__ import annotations

import functools
from typing import Any

VENDOR_KEY = "ID_VENDOR_FROM_DATABASE"
MODEL_KEY = "ID_MODEL_FROM_DATABASE"


@functools.cache
def _hwdb() -> tuple[Any, Any, Any] | None:
    try:
        import pyudev
        from pyudev._util import udev_list_iterate

        context = pyudev.Context()
        hwdb = context._libudev.udev_hwdb_new(context)
    except Exception:  # no libudev, or a pyudev without its hwdb binding: names are optional
        return None
    return (context._libudev, hwdb, udev_list_iterate) if hwdb else None


@functools.cache
def pci_names(vendor: int, device: int) -> tuple[str | None, str | None]:
    """(vendor name, model name) for a PCI vendor and device ID."""
    found = _hwdb()
    if found is None:
        return None, None
    libudev, hwdb, iterate = found
    entry = libudev.udev_hwdb_get_properties_list_entry(hwdb, f"pci:v{vendor:08X}d{device:08X}".encode(), 0)
    properties = {_text(k): _text(v) for k, v in iterate(libudev, entry)}
    return properties.get(VENDOR_KEY), properties.get(MODEL_KEY)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

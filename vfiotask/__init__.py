"""vfiotask: parallel prefault, pinning and preparation of VFIO guest memory.

The public API lives here; the command line and the libvirt hook are thin layers over it.
"""

from __future__ import annotations

from vfiotask.errors import (
    DeviceError,
    HugepageShortageError,
    MemlockLimitError,
    ResourceError,
    TaskFailed,
    UsageError,
    VfiotaskError,
)
from vfiotask.units import format_size, parse_size

TYPE_CHECKING = False  # importing typing would cost the libvirt hook milliseconds on every phase
if TYPE_CHECKING:
    from typing import Any

    from vfiotask.devices import DmaContainer, check_devices_usable, discover, group_viability, open_container
    from vfiotask.engine import CpuPolicy, Engine, HelperKind, Part, Task, TaskReport
    from vfiotask.host.cpus import host_engine
    from vfiotask.jobs.bind import bind, unbind
    from vfiotask.jobs.hugepages import HugepageReserver, Reservation
    from vfiotask.jobs.pin import MlockBackend, PinBackend, Pinning, pin
    from vfiotask.jobs.prefault import PrefaultReport, prefault
    from vfiotask.memory import LockedMemoryAccountant, Region, RegionSpec, open_region

__version__ = "0.1.0"

# Everything below errors and units is imported on first use: the libvirt hook imports this
# package on every phase of every guest and must leave within milliseconds for a guest that is
# not ours.
_LAZY = {
    "Engine": "vfiotask.engine",
    "HelperKind": "vfiotask.engine",
    "Part": "vfiotask.engine",
    "Task": "vfiotask.engine",
    "TaskReport": "vfiotask.engine",
    "CpuPolicy": "vfiotask.engine",
    "host_engine": "vfiotask.host.cpus",
    "LockedMemoryAccountant": "vfiotask.memory",
    "Region": "vfiotask.memory",
    "RegionSpec": "vfiotask.memory",
    "open_region": "vfiotask.memory",
    "PrefaultReport": "vfiotask.jobs.prefault",
    "prefault": "vfiotask.jobs.prefault",
    "MlockBackend": "vfiotask.jobs.pin",
    "PinBackend": "vfiotask.jobs.pin",
    "Pinning": "vfiotask.jobs.pin",
    "pin": "vfiotask.jobs.pin",
    "HugepageReserver": "vfiotask.jobs.hugepages",
    "Reservation": "vfiotask.jobs.hugepages",
    "bind": "vfiotask.jobs.bind",
    "unbind": "vfiotask.jobs.bind",
    "DmaContainer": "vfiotask.devices",
    "check_devices_usable": "vfiotask.devices",
    "discover": "vfiotask.devices",
    "group_viability": "vfiotask.devices",
    "open_container": "vfiotask.devices",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vfiotask' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "CpuPolicy",
    "DeviceError",
    "DmaContainer",
    "Engine",
    "HelperKind",
    "HugepageReserver",
    "HugepageShortageError",
    "LockedMemoryAccountant",
    "MemlockLimitError",
    "MlockBackend",
    "Part",
    "PinBackend",
    "Pinning",
    "PrefaultReport",
    "Region",
    "RegionSpec",
    "Reservation",
    "ResourceError",
    "Task",
    "TaskFailed",
    "TaskReport",
    "UsageError",
    "VfiotaskError",
    "bind",
    "check_devices_usable",
    "discover",
    "format_size",
    "group_viability",
    "host_engine",
    "open_container",
    "open_region",
    "parse_size",
    "pin",
    "prefault",
    "unbind",
]

"""vfiotask: parallel prefault, pinning and preparation of VFIO guest memory.

The public API lives here; the command line and the libvirt hook are thin layers over it.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from vfiotask.engine import Engine, HelperKind, Part, Task, TaskReport, run_task
    from vfiotask.jobs.pin import MlockBackend, PinBackend, Pinning, pin
    from vfiotask.jobs.prefault import PrefaultReport, prefault
    from vfiotask.memory import LockedMemoryAccountant, Region, RegionSpec, open_region

__version__ = "0.1.0"

_ENGINE_NAMES = frozenset({"Engine", "HelperKind", "Part", "Task", "TaskReport", "run_task"})
_MEMORY_NAMES = {  # regions, the accountant and the jobs over them, also imported on first use
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
}


def __getattr__(name: str) -> Any:
    """The engine is imported on first use: the libvirt hook imports this package on every phase of
    every guest and must leave within milliseconds for a guest that is not ours."""
    if name in _ENGINE_NAMES:
        import vfiotask.engine

        return getattr(vfiotask.engine, name)
    if name in _MEMORY_NAMES:
        import importlib

        return getattr(importlib.import_module(_MEMORY_NAMES[name]), name)
    raise AttributeError(f"module 'vfiotask' has no attribute {name!r}")

__all__ = [
    "DeviceError",
    "Engine",
    "HelperKind",
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
    "ResourceError",
    "Task",
    "TaskFailed",
    "TaskReport",
    "UsageError",
    "VfiotaskError",
    "format_size",
    "open_region",
    "parse_size",
    "pin",
    "prefault",
    "run_task",
]

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

__version__ = "0.1.0"

_ENGINE_NAMES = frozenset({"Engine", "HelperKind", "Part", "Task", "TaskReport", "run_task"})


def __getattr__(name: str) -> Any:
    """The engine is imported on first use: the libvirt hook imports this package on every phase of
    every guest and must leave within milliseconds for a guest that is not ours."""
    if name in _ENGINE_NAMES:
        import vfiotask.engine

        return getattr(vfiotask.engine, name)
    raise AttributeError(f"module 'vfiotask' has no attribute {name!r}")

__all__ = [
    "DeviceError",
    "Engine",
    "HelperKind",
    "HugepageShortageError",
    "MemlockLimitError",
    "Part",
    "ResourceError",
    "Task",
    "TaskFailed",
    "TaskReport",
    "UsageError",
    "VfiotaskError",
    "format_size",
    "parse_size",
    "run_task",
]

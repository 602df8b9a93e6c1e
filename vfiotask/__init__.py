"""vfiotask: parallel prefault, pinning and preparation of VFIO guest memory.

The public API lives here; the command line and the libvirt hook are thin layers over it.
"""

from vfiotask.engine import Engine, HelperKind, Part, Task, TaskReport, run_task
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

__version__ = "0.1.0"

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
